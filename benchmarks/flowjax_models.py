"""The benchmarked flows in flowjax: JAX on the CPU, each operation compiled with ``jax.jit``.

The same three architectures as ``benchmarks.models`` (identical layer sizes, so identical
parameter counts, which the benchmark prints and checks), built with flowjax's own flow
constructors:

- ``maf``: ``masked_autoregressive_flow``, 5 layers, MADE D -> 64 -> 64 -> 2D, flowjax's affine
  transformer (2 parameters per coordinate, as refflow's), ``invert=True`` so that the density
  is the one-pass direction, as in refflow's MAF;
- ``realnvp``: ``coupling_flow``, 8 affine couplings, MLP d -> 64 -> 64 -> 2(D - d);
- ``nsf``: ``masked_autoregressive_flow`` with ``RationalQuadraticSpline(knots=7,
  interval=5)``: 8 bins on [-5, 5] (flowjax counts inner knots), identity tails. Not the same
  construction: flowjax's spline also parameterises the two derivatives at the interval's
  ends (25 parameters per coordinate; refflow, zuko and nflows fix them to 1: 23), so its
  output layer is 2 * 65 weights per coordinate larger (22806 parameters against 22026 at
  D 2, 93744 against 87504 at D 16).

Differences that do not change the cost: flowjax permutes the coordinates between layers with
a random permutation (refflow alternates natural and reversed orders), and its affine scale
is a softplus with a floor (refflow: exp). ``log_prob``, the gradient of the mean negative
log-likelihood with respect to every parameter, and ``sample`` are each one ``jax.jit``
function; the first call of each, for each input shape, compiles it: ``compile_seconds``
reports that time, which the benchmark excludes from its timings (its warm-up call).

XLA's thread pool must be limited before jax is imported (``xla_flags(threads)``).
"""

from __future__ import annotations

import time
from typing import Any

from benchmarks.models import BINS, BOUND, HIDDEN, LAYERS, MODELS, Impl


def xla_flags(threads: int) -> str:
    """The XLA_FLAGS that hold XLA's CPU work to ``threads`` threads (1: one core)."""
    if threads == 1:
        return "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
    return f"intra_op_parallelism_threads={threads}"


def flowjax_impl(model: str, dim: int, dtype: str, device: str = "cpu", seed: int = 0) -> Impl:
    import jax

    if dtype == "float64":
        jax.config.update("jax_enable_x64", True)
    import equinox as eqx
    import jax.numpy as jnp
    import jax.random as jr
    import paramax
    from flowjax.bijections import RationalQuadraticSpline
    from flowjax.distributions import StandardNormal
    from flowjax.flows import coupling_flow, masked_autoregressive_flow

    if model not in MODELS:
        raise ValueError(f"model: expected one of {MODELS}, got {model!r}")
    key = jr.key(seed)
    base = StandardNormal((dim,))
    common = dict(flow_layers=LAYERS[model], nn_width=HIDDEN[0], nn_depth=len(HIDDEN),
                  invert=True)
    if model == "maf":
        flow = masked_autoregressive_flow(key, base_dist=base, **common)
    elif model == "realnvp":
        flow = coupling_flow(key, base_dist=base, **common)
    else:
        spline = RationalQuadraticSpline(knots=BINS - 1, interval=BOUND)
        flow = masked_autoregressive_flow(key, base_dist=base, transformer=spline, **common)
    cast = getattr(jnp, dtype)
    flow = jax.tree_util.tree_map(
        lambda a: a.astype(cast) if eqx.is_inexact_array(a) else a, flow)
    params, static = eqx.partition(
        flow, eqx.is_inexact_array, is_leaf=lambda leaf: isinstance(leaf, paramax.NonTrainable))

    def nll(params, x):
        dist = paramax.unwrap(eqx.combine(params, static))
        return -jnp.mean(dist.log_prob(x))

    # parameters are arguments, not constants folded into the compiled code
    log_prob = jax.jit(lambda p, x: paramax.unwrap(eqx.combine(p, static)).log_prob(x))
    loss_grad = jax.jit(jax.grad(nll))
    sample = jax.jit(lambda p, k, n: paramax.unwrap(eqx.combine(p, static)).sample(k, (n,)),
                     static_argnums=2)
    sample_key = jr.key(seed + 1)
    compile_seconds: dict[str, float] = {}

    def timed_first(name: str, fn: Any) -> Any:
        # the first call for an input shape compiles: its time is reported, not benchmarked
        seen: set = set()

        def run(arg):
            shape = getattr(arg, "shape", arg)
            if shape in seen:
                return fn(arg)
            seen.add(shape)
            start = time.perf_counter()
            out = jax.block_until_ready(fn(arg))
            compile_seconds[f"{name}{list(shape) if isinstance(shape, tuple) else shape}"] = (
                time.perf_counter() - start)
            return out

        return run

    counted = sum(int(a.size) for a in jax.tree_util.tree_leaves(params))
    impl = Impl(
        library="flowjax",
        n_params=counted,
        prepare=lambda x: jnp.asarray(x),
        log_prob=timed_first("log_prob", lambda x: jax.block_until_ready(log_prob(params, x))),
        loss_grad=timed_first("grad", lambda x: jax.block_until_ready(loss_grad(params, x))),
        sample=timed_first("sample",
                           lambda n: jax.block_until_ready(sample(params, sample_key, n))),
        sync=lambda: None,
    )
    impl.compile_seconds = compile_seconds
    return impl
