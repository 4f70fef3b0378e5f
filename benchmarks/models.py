"""The benchmarked flows, built the same way in refflow, zuko and nflows.

Three architectures, identical layer sizes (and therefore parameter counts, which the
benchmark prints and checks) in every library; the hidden activation is ReLU, the default
of both peers:

- ``maf``: 5 masked autoregressive layers, MADE D -> 64 -> 64 -> 2D, affine transformer,
  orders alternating natural / reversed.
- ``realnvp``: 8 affine couplings, MLP d -> 64 -> 64 -> 2(D - d), halves alternating.
- ``nsf``: 3 masked autoregressive layers with a rational-quadratic spline of 8 bins on
  [-5, 5] (identity tails), MADE D -> 64 -> 64 -> 23D.
- ``cmaf``, ``cnsf``: ``maf`` and ``nsf`` conditioned on a context c of C = 8 values
  (``CONTEXT``): p(x | c). The layers, orders and sizes are those of the unconditional
  models; where c enters the MADE is each library's own construction, so the parameter
  counts differ (the benchmark prints them), per layer and with P outputs per coordinate:

  - refflow: c is an input of every layer (D + C -> 64, 64 + C -> 64, 64 + C -> P D), so
    that the autoregressive property holds in x and not in c: C (128 + P D) more weights
    than ``maf``/``nsf``;
  - zuko: c is concatenated to the input of the first layer only (D + C -> 64): 64 C more;
  - nflows: a separate ``Linear(C, 64)`` whose ReLU output is added to the first hidden
    layer only (its plain MADE blocks ignore the context): 64 C + 64 more.

  At D 2, per layer: refflow 1,056 (``cmaf``) / 1,392 (``cnsf``), zuko 512, nflows 576.
  The second and output MADE layers of zuko and nflows take no context, so they cost
  64 C and P D C fewer multiply-adds per row than refflow's. flowjax is not run on them
  (``benchmarks.run`` skips it for these rows).

Each builder returns an ``Impl``: three callables ``log_prob(x)``, ``loss_grad(x)`` (the
gradient of the mean negative log-likelihood with respect to all parameters: a training
step without the optimiser) and ``sample(n)``, plus the parameter count. Inputs are host
NumPy arrays; each implementation moves them to its own array type once, before timing.
For the conditional models the input is the pair ``(x, c)`` (``prepare`` moves both),
``log_prob`` and ``loss_grad`` take that pair, and ``sample`` takes it too and draws one
sample per context row (its x only gives the shape).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

MODELS = ("maf", "realnvp", "nsf", "cmaf", "cnsf")
LAYERS = {"maf": 5, "realnvp": 8, "nsf": 3, "cmaf": 5, "cnsf": 3}
#: the conditional models and the unconditional model each one conditions
CONDITIONAL = {"cmaf": "maf", "cnsf": "nsf"}
#: the context dimension C of the conditional models
CONTEXT = 8
HIDDEN = (64, 64)
BINS, BOUND = 8, 5.0


@dataclass
class Impl:
    """One library's version of one benchmarked flow."""

    library: str
    n_params: int
    prepare: Callable[[Any], Any]   # host array -> the library's array (done before timing)
    log_prob: Callable[[Any], Any]
    loss_grad: Callable[[Any], Any]
    sample: Callable[[int], Any]
    sync: Callable[[], None]        # waits for the device (a no-op on the CPU)


# ------------------------------------------------------------------------------ refflow


def refflow_impl(model: str, dim: int, dtype: str, seed: int = 0,
                 backend: str = "numpy") -> Impl:
    """refflow's version; ``backend="strict"`` runs it on the strict stand-in array of the
    tests (``scripts/gpu-check.sh --rehearse``: the CuPy steps, on the CPU)."""
    import autograd

    from refflow import backend as B
    from refflow.affine import Reverse
    from refflow.autoregressive import MAF
    from refflow.core import Compose, Flow
    from refflow.coupling import AffineCoupling
    from refflow.distributions import StandardNormal
    from refflow.elementwise import RationalQuadraticSpline
    from refflow.train import nll
    from refflow.tree import count_parameters, map_arrays, partition, ravel_leaves

    if model not in MODELS:
        raise ValueError(f"model: expected one of {MODELS}, got {model!r}")
    rng = B.rng(seed)
    orders = ("natural", "reversed")
    context_dim = CONTEXT if model in CONDITIONAL else 0
    kind = CONDITIONAL.get(model, model)
    if kind == "maf":
        layers = [MAF.init(rng, dim, HIDDEN, order=orders[i % 2], activation="relu",
                           context_dim=context_dim)
                  for i in range(LAYERS[model])]
    elif kind == "realnvp":
        layers = []
        for i in range(LAYERS[model]):
            if i:
                layers.append(Reverse())
            layers.append(AffineCoupling.init(rng, dim, hidden=HIDDEN, activation="relu"))
    else:
        layers = [MAF.init(rng, dim, HIDDEN, transformer=RationalQuadraticSpline,
                           order=orders[i % 2], activation="relu", bins=BINS, bound=BOUND,
                           context_dim=context_dim)
                  for i in range(LAYERS[model])]
    # float casts of every float array (masks included: they multiply float32 weights)
    flow = map_arrays(lambda a: a.astype(dtype) if a.dtype.kind == "f" else a,
                      Flow(StandardNormal(dim, dtype=dtype), Compose(*layers)))
    to_array = B.asarray
    sample_rng = B.rng(seed + 1)

    def draw(n, context=None):
        return flow.sample(n, sample_rng, context=context)

    if backend == "strict":
        from refflow import autograd_ext
        from tests.strict import StrictArray, strict

        autograd_ext.register_array_type(StrictArray)
        flow = map_arrays(strict, flow)
        to_array = strict

        def draw(n, context=None):
            # the noise is drawn on the host, as CuPy would draw it on the device
            z = sample_rng.standard_normal((n, dim), dtype=dtype)
            return flow.push_forward(strict(z), context)[0]

    # the gradient as refflow.fit takes it: with respect to one flat parameter vector
    leaves, rebuild = partition(flow)
    vector, unravel = ravel_leaves(leaves)
    grad = autograd.grad(lambda v, x, c: nll(rebuild(unravel(v)), x, c))
    common = dict(library="refflow", n_params=count_parameters(flow),
                  sync=_cupy_sync if B.get_backend() == "cupy" else _no_sync)
    if not context_dim:
        return Impl(prepare=to_array, log_prob=flow.log_prob,
                    loss_grad=lambda x: grad(vector, x, None), sample=draw, **common)

    return Impl(prepare=lambda pair: tuple(to_array(a) for a in pair),
                log_prob=lambda pair: flow.log_prob(*pair),
                loss_grad=lambda pair: grad(vector, *pair),
                sample=lambda pair: draw(pair[1].shape[0], pair[1]), **common)


def _no_sync() -> None:
    return None


def _cupy_sync() -> None:
    import cupy

    cupy.cuda.Device().synchronize()


# ------------------------------------------------------------------------------ torch peers


def _torch_impl(library: str, module: Any, log_prob: Callable, sample: Callable,
                dtype: str, device: str) -> Impl:
    import torch

    module = module.to(device=device, dtype=getattr(torch, dtype))
    params = [p for p in module.parameters() if p.requires_grad]

    def loss_grad(x):
        for p in params:
            p.grad = None
        loss = -log_prob(x).mean()
        loss.backward()
        return [p.grad for p in params]

    def prepare(x):
        # a conditional model's input is the pair (x, c)
        if isinstance(x, tuple):
            return tuple(torch.as_tensor(a, device=device) for a in x)
        return torch.as_tensor(x, device=device)

    def no_grad(fn):
        def run(arg):
            # nflows draws its base noise in torch's default dtype, whatever the module's
            previous = torch.get_default_dtype()
            torch.set_default_dtype(getattr(torch, dtype))
            try:
                with torch.no_grad():
                    return fn(arg)
            finally:
                torch.set_default_dtype(previous)
        return run

    return Impl(
        library=library,
        n_params=sum(p.numel() for p in params),
        prepare=prepare,
        log_prob=no_grad(log_prob),
        loss_grad=loss_grad,
        sample=no_grad(sample),
        sync=torch.cuda.synchronize if device.startswith("cuda") else _no_sync,
    )


def zuko_impl(model: str, dim: int, dtype: str, device: str = "cpu", seed: int = 0) -> Impl:
    import torch
    import zuko

    torch.manual_seed(seed)
    n = LAYERS[model]
    kind = CONDITIONAL.get(model, model)
    # zuko's second argument: the context features (0: unconditional)
    context = CONTEXT if model in CONDITIONAL else 0
    if kind == "maf":
        flow = zuko.flows.MAF(dim, context, transforms=n, hidden_features=HIDDEN)
    elif kind == "realnvp":
        flow = zuko.flows.RealNVP(dim, transforms=n, hidden_features=HIDDEN)
    else:
        flow = zuko.flows.NSF(dim, context, transforms=n, hidden_features=HIDDEN, bins=BINS)
    if context:
        # flow(c) is the distribution at each context row: one sample per row
        return _torch_impl("zuko", flow, lambda pair: flow(pair[1]).log_prob(pair[0]),
                           lambda pair: flow(pair[1]).sample(), dtype, device)
    return _torch_impl("zuko", flow, lambda x: flow().log_prob(x),
                       lambda k: flow().sample((k,)), dtype, device)


def nflows_impl(model: str, dim: int, dtype: str, device: str = "cpu", seed: int = 0) -> Impl:
    import torch
    from nflows import distributions, flows, transforms
    from nflows.nn import nets
    from nflows.utils import torchutils

    class _ContextFreeMLP(nets.MLP):
        # nflows' couplings call net(x, context); its plain MLP takes x only
        def forward(self, inputs, context=None):
            return super().forward(inputs)

    torch.manual_seed(seed)
    n = LAYERS[model]
    kind = CONDITIONAL.get(model, model)
    # MADE D -> 64 -> 64 -> P D: one initial layer and one plain (non-residual) block; with
    # context_features, nflows adds the context to the initial layer only
    made = dict(hidden_features=HIDDEN[0], num_blocks=len(HIDDEN) - 1,
                use_residual_blocks=False,
                context_features=CONTEXT if model in CONDITIONAL else None)
    layers = []
    for i in range(n):
        if i:
            layers.append(transforms.ReversePermutation(dim))
        if kind == "maf":
            layers.append(transforms.MaskedAffineAutoregressiveTransform(dim, **made))
        elif kind == "realnvp":
            mask = torchutils.create_alternating_binary_mask(dim, even=i % 2 == 0)
            layers.append(transforms.AffineCouplingTransform(
                mask, lambda c_in, c_out: _ContextFreeMLP([c_in], [c_out], list(HIDDEN))))
        else:
            layers.append(transforms.MaskedPiecewiseRationalQuadraticAutoregressiveTransform(
                dim, num_bins=BINS, tails="linear", tail_bound=BOUND, **made))
    flow = flows.Flow(transforms.CompositeTransform(layers), distributions.StandardNormal([dim]))
    if model in CONDITIONAL:
        # nflows draws num_samples per context row: (N, 1, D) for one each
        return _torch_impl("nflows", flow, lambda pair: flow.log_prob(*pair),
                           lambda pair: flow.sample(1, context=pair[1])[:, 0], dtype, device)
    return _torch_impl("nflows", flow, flow.log_prob, flow.sample, dtype, device)


def flowjax_impl(model: str, dim: int, dtype: str, device: str = "cpu", seed: int = 0) -> Impl:
    """flowjax (JAX, jit-compiled): see ``benchmarks/flowjax_models.py``; unconditional only."""
    from benchmarks.flowjax_models import flowjax_impl as build

    if model in CONDITIONAL:
        raise ValueError(f"model: flowjax runs the unconditional models only, got {model!r}")

    return build(model, dim, dtype, device=device, seed=seed)


BUILDERS = {"refflow": refflow_impl, "zuko": zuko_impl, "nflows": nflows_impl,
            "flowjax": flowjax_impl}
#: the libraries that run on torch (the others: refflow on NumPy/CuPy, flowjax on JAX)
TORCH_LIBRARIES = ("zuko", "nflows")
