"""Whole-network CPU timings: torch RedNet (the fast numba op) against torch ResNet-50, each in its best configuration.

What is timed, float32 at ``batch x 3 x 224 x 224`` (issue 31):

* inference (``eval()``, ``torch.no_grad()``), eager and compiled (``torch.compile(fullgraph=True)``, inductor
  with ``freezing`` (:func:`frozen`), which folds BN into the convolutions and prepacks their weights), at each
  batch size;
* a training step (forward, cross-entropy, backward, SGD step) at the largest batch size, eager and compiled.

Each network runs in every configuration of :data:`EAGER_CONFIGURATIONS` (memory format; BN folded by
:func:`involution.torch.models.fold_batch_norms` and ReLUs in place, :func:`relu_in_place`, at inference; every
convolution through oneDNN, :func:`involution.torch.models.onednn_convolutions`), the training step also in
:data:`ONEDNN_TRAINING_CONFIGURATIONS`, and, for RedNet, each count of threads for the op's numba kernels
(:data:`OP_THREADS`); the same torch options are offered to both networks, and each network's fastest
configuration gives its time. Beside each RedNet, its floors (:data:`FLOORS`) run in the same configurations: the
network with every involution layer replaced by a free stand-in (:func:`floor_network`), and that with the stem
also ResNet's: what the layers RedNet shares with ResNet cost, the lower bound of its time whatever the op. Every
configuration is checked before timing (its logits against the network's plain
eager forward, RedNet's fast op against the plain-PyTorch ``taps`` op). Timed calls are interleaved (one call of each
configuration of each network per round), so the load of other jobs falls on all of them alike; the median and the
spread (lowest and highest) of the rounds are reported with the load average before and after. The training step
also reports what autograd saves for the backward (RedNet's generated kernels against ResNet's activations), and a
profile (``torch.profiler``) gives each network's share of time per op category.

Commands: ``python -m involution bench --networks [--quick]`` (ratios beside the FLOPs ratio), or this module:
``python -m involution.benchmarks.networks --threads 2 --json out/bench_networks.json``.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import os
import statistics
import sys
import time

import numpy as np

from involution.benchmarks.timing import interleaved_times

# RedNet-50 / ResNet-50 time ratios issue 31 asks for; the goal is the FLOPs ratio (reference.complexity).
TARGETS = {"inference": 0.75, "training": 0.85}
BASELINE = "resnet50"
# RedNet's floors, timed as networks "<rednet>/<floor>": (floor, ResNet's stem instead of RedNet's). Every involution
# layer (the op and its kernel generation) is a free stand-in; "floor+stem" also takes ResNet's stem (7x7 conv, BN,
# ReLU) for RedNet's (two 3x3 convs around an involution): what is left is what RedNet shares with ResNet.
FLOORS = (("floor", False), ("floor+stem", True))
NETWORKS = ("rednet26", "rednet38", "rednet50", "rednet101", "rednet152", "resnet50")
# (name, memory format, fold BN and run the ReLUs in place at inference, every convolution through oneDNN)
EAGER_CONFIGURATIONS = (
    ("contiguous", "contiguous", False, False),
    ("contiguous+folded", "contiguous", True, False),
    ("channels_last", "channels_last", False, False),
    ("channels_last+folded", "channels_last", True, False),
    ("contiguous+folded+onednn", "contiguous", True, True),
    ("channels_last+folded+onednn", "channels_last", True, True),
)
COMPILED_CONFIGURATIONS = (("contiguous", "contiguous", False, False), ("channels_last", "channels_last", False, False))
ONEDNN_TRAINING_CONFIGURATIONS = (("contiguous+onednn", "contiguous", False, True),
                                  ("channels_last+onednn", "channels_last", False, True))  # eager only
TRAINING_CONFIGURATIONS = COMPILED_CONFIGURATIONS + ONEDNN_TRAINING_CONFIGURATIONS
OP_THREADS = ("torch", 1)  # the op's numba threads: torch's count, or one
COMPILES_PER_FORWARD = 256  # dynamo's recompile limit in the benchmark (:func:`compile_limits`)
RELATIVE_TOLERANCE = 1e-4  # float32 logits through ~50 layers: catches a wrong op or transform, not rounding
CATEGORIES = (  # (category, substrings of profiler op names), first match wins; the rest is "other"
    ("convolution", ("convolution", "conv2d", "addmm", "mkldnn_linear", "linear")),
    ("involution op", ("involution",)),
    ("batch norm", ("batch_norm",)),
    ("ReLU", ("relu", "clamp_min", "threshold")),
    ("residual add", ("aten::add",)),
    ("pooling", ("pool", "aten::mean")),
    ("copies and layout", ("copy_", "contiguous", "clone", "to_dense", "to_mkldnn")),
)


def build_network(name: str, backend: str = "fast"):
    """``"rednet50"``, ``"resnet50"``... as a torch module (seed 0, 1000 classes) in eval mode."""
    from involution.reference.complexity import parse_model_name
    from involution.torch.models import RedNet, ResNet

    family, depth = parse_model_name(name)
    network = RedNet(depth, seed=0, backend=backend) if family == "rednet" else ResNet(depth, seed=0)
    return network.eval()


def _free_involution(stride):
    """A module that costs (almost) nothing and gives an involution layer's output shape ``(B, C, ceil(H / sh),
    ceil(W / sw))``: its input itself at stride 1, a strided view of it otherwise (no copy; a backward through it
    scatters the gradient into a zero tensor of the input's shape)."""
    from torch import nn

    class FreeStandIn(nn.Module):
        def forward(self, x):
            return x if tuple(stride) == (1, 1) else x[:, :, ::stride[0], ::stride[1]]

    return FreeStandIn()


def floor_network(network, resnet_stem: bool = False):
    """A copy of RedNet ``network`` with every ``Involution2d`` (the op and its kernel generation) a free stand-in of
    its output shape, and with ``resnet_stem`` also ResNet's stem (7x7/2 conv, BN, ReLU: ``stem_channels`` out, the
    shape RedNet's stem gives) instead of RedNet's: the layers RedNet shares with ResNet, the floor of its time.
    ``network`` is left as it was; the copy's function is not RedNet's (timing only)."""
    from torch import nn

    from involution.torch.models import Involution2d

    floor = copy.deepcopy(network)
    for module in list(floor.modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, Involution2d):
                setattr(module, child_name, _free_involution(child.stride))
    if resnet_stem:
        backbone = floor.backbone
        stem_in = backbone.stem[0].conv.in_channels
        stem_out = backbone.stem[-1].conv.out_channels
        backbone.stem = nn.Sequential(nn.Conv2d(stem_in, stem_out, 7, 2, 3, bias=False), nn.BatchNorm2d(stem_out),
                                      nn.ReLU())
    return floor.train(network.training)


def timed_networks(names, floors: bool = True) -> dict:
    """label -> network of each network of ``names`` (:func:`build_network`), each RedNet followed by its floors
    (:data:`FLOORS`, labelled ``"<name>/<floor>"``) when ``floors``."""
    result = {}
    for name in names:
        network = result[name] = build_network(name)
        if floors and name.startswith("rednet"):
            for floor, resnet_stem in FLOORS:
                result[f"{name}/{floor}"] = floor_network(network, resnet_stem)
    return result


def is_floor(label: str) -> bool:
    return "/" in label


def flops_ratio(name: str, baseline: str = BASELINE) -> float:
    """Multiply-adds of ``name`` over ``baseline`` at 224x224 (:mod:`involution.reference.complexity`, published
    convention: mmcv's counter, as the paper's tables)."""
    from involution.reference import complexity

    macs = {model: complexity.count(complexity.describe_model(model), (224, 224)).total("published").macs
            for model in (name, baseline)}
    return macs[name] / macs[baseline]


def relative_difference(got, expected) -> float:
    return float((got - expected).abs().max() / expected.abs().max())


def check_close(got, expected, what: str, log) -> None:
    """Raise AssertionError naming ``what`` when ``got`` and ``expected`` differ by more than the tolerance."""
    error = relative_difference(got, expected)
    if not error <= RELATIVE_TOLERANCE:
        raise AssertionError(f"{what}: logits differ from the reference forward by {error:.2e} relative "
                             f"(> {RELATIVE_TOLERANCE:g})")
    log(f"{what}: within {error:.1e} of the reference forward")


def summary(seconds: list) -> dict:
    """Median, lowest and highest of a list of seconds, in milliseconds."""
    return {"median_ms": 1e3 * statistics.median(seconds), "min_ms": 1e3 * min(seconds),
            "max_ms": 1e3 * max(seconds), "rounds": len(seconds)}


@contextlib.contextmanager
def op_threads(count):
    """numba's thread count for the op set to ``count`` ("torch": torch's count) within the block."""
    import numba
    import torch

    previous = numba.get_num_threads()
    numba.set_num_threads(torch.get_num_threads() if count == "torch" else count)
    try:
        yield
    finally:
        numba.set_num_threads(previous)


def op_thread_choices(name: str) -> tuple:
    """The op thread counts to try for network ``name``: :data:`OP_THREADS` for RedNet ("torch" alone when torch
    runs one thread, where both are the same), "torch" for ResNet and RedNet's floors (no op)."""
    import torch

    if not name.startswith("rednet") or is_floor(name) or torch.get_num_threads() == 1:
        return ("torch",)
    return OP_THREADS


def with_op_threads(call, count):
    def run():
        with op_threads(count):
            return call()
    return run


def relu_in_place(network):
    """``network`` with every ``nn.ReLU`` in place (``inplace=True``, as torchvision builds ResNet): no new tensor per
    ReLU. Safe in RedNet and ResNet, whose ReLUs each follow a BN, a convolution or a residual add whose output
    nothing else reads. Returns ``network``."""
    import torch

    for module in network.modules():
        if isinstance(module, torch.nn.ReLU):
            module.inplace = True
    return network


def inference_variant(network, memory_format: str, fold: bool, compiled: bool, onednn: bool = False):
    """``(forward, convert input)`` of ``network`` in one configuration (a copy: ``network`` is left as it was)."""
    import torch

    from involution.torch.models import fold_batch_norms, onednn_convolutions

    variant = relu_in_place(fold_batch_norms(network)) if fold else copy.deepcopy(network)
    if onednn:
        variant = onednn_convolutions(variant)
    layout = torch.channels_last if memory_format == "channels_last" else torch.contiguous_format
    variant = variant.to(memory_format=layout)
    if compiled:
        variant = frozen(torch.compile(variant, fullgraph=True))
    return variant, (lambda images: images.contiguous(memory_format=layout))


def frozen(compiled_forward):
    """``compiled_forward`` called with inductor's ``freezing`` on: parameters become constants, so inductor folds
    BN into the convolutions and prepacks their weights for oneDNN (``mkldnn._convolution_pointwise``, ReLUs fused).
    The flag must be on while dynamo traces (at the first call and any recompile), which reads it to turn parameters
    into constants (pytorch/pytorch#139272): ``torch.compile(..., options={"freezing": True})`` alone froze nothing
    here, its generated code calling unpacked convolutions with the weights as inputs (the check:
    tests/test_rednet_channels_last.py)."""
    import torch

    def forward(images):
        with torch._inductor.config.patch(freezing=True), compile_limits():
            return compiled_forward(images)

    return forward


def compile_limits():
    """A context raising dynamo's recompile limit: every network and floor shares one ``forward`` code object
    (``involution.torch.models``), compiled once per network, memory format, batch size and mode, beyond dynamo's
    default of 8 per code object (``fullgraph=True`` then fails instead of falling back)."""
    import torch

    return torch._dynamo.config.patch(recompile_limit=COMPILES_PER_FORWARD)


def network_variants(networks: dict, compiled: bool, compiled_configurations=COMPILED_CONFIGURATIONS) -> dict:
    """``(label, mode, configuration, op threads) -> (forward, convert input)`` of every inference variant of
    ``networks`` (label -> network, :func:`timed_networks`)."""
    variants = {}
    for name, network in networks.items():
        modes = [("eager", EAGER_CONFIGURATIONS)] + ([("compiled", compiled_configurations)] if compiled else [])
        for mode, configurations in modes:
            for configuration, memory_format, fold, onednn in configurations:
                forward = inference_variant(network, memory_format, fold, mode == "compiled", onednn)
                for threads in op_thread_choices(name):
                    variants[(name, mode, configuration, threads)] = forward
    return variants


def time_inference(names, batches, rounds: int, compiled: bool, log=print, size: int = 224,
                   compiled_configurations=COMPILED_CONFIGURATIONS, floors: bool = True) -> list[dict]:
    """Rows ``{network, mode, configuration, op_threads, batch, median_ms, min_ms, max_ms}`` of every inference
    variant (RedNet's floors too, when ``floors``), validated first (AssertionError if one differs from the plain
    eager forward of its network)."""
    import torch

    networks = timed_networks(names, floors)
    variants = network_variants(networks, compiled, compiled_configurations)
    rows = []
    for batch in batches:
        images = torch.from_numpy(np.random.default_rng(batch).standard_normal((batch, 3, size, size),
                                                                              dtype=np.float32))
        calls, compile_seconds = {}, {}
        with torch.no_grad():
            plain = {label: network(images) for label, network in networks.items()}
            for name in names:
                if name.startswith("rednet"):
                    check_close(plain[name], build_network(name, backend="taps")(images),
                                f"{name} fast op against the taps op, batch {batch}", log)
            for key, (forward, convert) in variants.items():
                inputs = convert(images)
                call = with_op_threads(lambda forward=forward, inputs=inputs: forward(inputs), key[3])
                started = time.perf_counter()
                got = call()  # compiles a compiled variant at this batch size
                compile_seconds[key] = time.perf_counter() - started
                check_close(got, plain[key[0]], f"{key[0]} {key[1]} {key[2]} (op threads {key[3]}), batch {batch}",
                            log)
                calls[key] = call
            times = interleaved_times(calls, rounds)
        for key, seconds in times.items():
            name, mode, configuration, threads = key
            row = {"network": name, "mode": mode, "configuration": configuration, "op_threads": threads,
                   "batch": batch, **summary(seconds)}
            if mode == "compiled":
                row["first_call_s"] = compile_seconds[key]
            rows.append(row)
            log(f"{name:>19s} {mode:>8s} {configuration:>21s} op threads {threads!s:>5s}  batch {batch}  "
                f"{row['median_ms']:8.1f} ms  ({row['min_ms']:.1f} to {row['max_ms']:.1f})")
    return rows


def saved_for_backward_bytes(step) -> int:
    """Bytes of the distinct tensors autograd saves for the backward during ``step()`` (what a training step keeps
    alive between forward and backward; storages shared by several saved tensors counted once)."""
    import torch

    storages = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        step()
    return sum(storages.values())


def training_step(network, images, labels, compiled: bool, onednn: bool = False):
    """A callable running one SGD step (forward, cross-entropy, backward, update) of a copy of ``network``, with
    ``onednn`` its convolutions :class:`involution.torch.models.OneDNNConv2d`."""
    import torch

    from involution.torch.models import onednn_convolutions

    model = copy.deepcopy(network).train()
    if onednn:
        model = onednn_convolutions(model)
    forward = torch.compile(model, fullgraph=True) if compiled else model
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)

    def step():
        optimizer.zero_grad(set_to_none=True)
        with compile_limits():
            logits = forward(images)
        loss = torch.nn.functional.cross_entropy(logits, labels)
        loss.backward()
        optimizer.step()
        return loss

    return step


def time_training(names, batch: int, rounds: int, compiled: bool, log=print, size: int = 224,
                  configurations=TRAINING_CONFIGURATIONS, floors: bool = True) -> list[dict]:
    """Rows ``{network, mode, configuration, op_threads, batch, median_ms, ..., saved_mib}`` of the training step
    in each memory format, eager (and compiled), with the eager step's saved-for-backward size; RedNet's floors
    too when ``floors``."""
    import torch

    images = torch.from_numpy(np.random.default_rng(batch).standard_normal((batch, 3, size, size),
                                                                          dtype=np.float32))
    labels = torch.arange(batch) % 1000
    calls, saved = {}, {}
    for name, network in timed_networks(names, floors).items():
        for mode in ("eager", "compiled") if compiled else ("eager",):
            for configuration, memory_format, _, onednn in configurations:
                if onednn and mode == "compiled":  # inductor picks its own convolutions
                    continue
                layout = torch.channels_last if memory_format == "channels_last" else torch.contiguous_format
                step = training_step(network.to(memory_format=layout), images.contiguous(memory_format=layout),
                                     labels, mode == "compiled", onednn)
                for threads in op_thread_choices(name):
                    key = (name, mode, configuration, threads)
                    calls[key] = with_op_threads(step, threads)
                    if mode == "eager" and threads == "torch":
                        saved[(name, configuration)] = saved_for_backward_bytes(calls[key])
    times = interleaved_times(calls, rounds)
    rows = []
    for key, seconds in times.items():
        name, mode, configuration, threads = key
        rows.append({"network": name, "mode": f"training {mode}", "configuration": configuration,
                     "op_threads": threads, "batch": batch, **summary(seconds),
                     "saved_mib": saved[(name, configuration)] / 2 ** 20})
        log(f"{name:>19s} training {mode:>8s} {configuration:>13s} op threads {threads!s:>5s}  batch {batch}  "
            f"{rows[-1]['median_ms']:8.1f} ms  ({rows[-1]['min_ms']:.1f} to {rows[-1]['max_ms']:.1f}), saved for "
            f"backward {rows[-1]['saved_mib']:.0f} MiB")
    return rows


def best_rows(rows) -> dict:
    """(network, mode, batch) -> the row of the fastest configuration (lowest median)."""
    best = {}
    for row in rows:
        key = (row["network"], row["mode"], row["batch"])
        if key not in best or row["median_ms"] < best[key]["median_ms"]:
            best[key] = row
    return best


def ratios(rows, baseline: str = BASELINE) -> list[dict]:
    """Each network's best time over ``baseline``'s best, per mode and batch, beside the FLOPs ratio and target."""
    best = best_rows(rows)
    result = []
    for (name, mode, batch), row in best.items():
        if name == baseline or (baseline, mode, batch) not in best:
            continue
        base = best[(baseline, mode, batch)]
        target = TARGETS["training" if mode.startswith("training") else "inference"] if name == "rednet50" else None
        ratio = row["median_ms"] / base["median_ms"]
        result.append({"network": name, "mode": mode, "batch": batch, "ratio": ratio, "flops_ratio":
                       None if is_floor(name) else flops_ratio(name, baseline), "target": target,
                       "target_met": None if target is None else ratio <= target,
                       "configuration": f"{row['configuration']} (op threads {row['op_threads']})",
                       "baseline_configuration": base["configuration"]})
    return result


def categorise(op_name: str) -> str:
    for category, needles in CATEGORIES:
        if any(needle in op_name for needle in needles):
            return category
    return "other"


def profile_shares(names, batch: int, calls: int = 3, log=print, size: int = 224) -> dict:
    """network -> {op category: share of self CPU time} over ``calls`` eager inference forwards (plain
    configuration, ``torch.profiler``), largest first."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    shares = {}
    images = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(batch))
    for name in names:
        network = build_network(name)
        with torch.no_grad():
            network(images)
            with profile(activities=[ProfilerActivity.CPU]) as profiler:
                for _ in range(calls):
                    network(images)
        totals = {}
        for event in profiler.key_averages():
            category = categorise(event.key)
            totals[category] = totals.get(category, 0.0) + event.self_cpu_time_total
        whole = sum(totals.values()) or 1.0
        shares[name] = dict(sorted(((key, value / whole) for key, value in totals.items()), key=lambda kv: -kv[1]))
        log(f"{name} eager inference, batch {batch}, share of self CPU time: "
            + ", ".join(f"{key} {100 * value:.1f}%" for key, value in shares[name].items()))
    return shares


def format_ratios(result) -> str:
    """The ratios as a text table, each RedNet's floors (:data:`FLOORS`) on the lines after it."""
    lines = [f"{'network':>19s} {'mode':>17s} {'batch':>5s} {'time ratio':>10s} {'FLOPs ratio':>11s}  target"]
    for row in sorted(result, key=lambda row: (row["mode"], row["batch"], row["network"])):
        if is_floor(row["network"]):
            target = "the floor: involution layers free" + (", ResNet's stem" if row["network"].endswith("stem")
                                                             else "")
        else:
            target = "" if row["target"] is None else (f"<= {row['target']}: " + ("met" if row["target_met"]
                                                                                     else "NOT met"))
        flops = "" if row["flops_ratio"] is None else f"{row['flops_ratio']:.2f}"
        lines.append(f"{row['network']:>19s} {row['mode']:>17s} {row['batch']:>5d} {row['ratio']:>10.2f} "
                     f"{flops:>11s}  {target}")
    return "\n".join(lines)


def run(networks=("rednet50", BASELINE), batches=(1, 8), rounds: int = 5, compiled: bool = True,
        training: bool = True, profile: bool = True, quick: bool = False, size: int = 224, log=print,
        floors: bool = True) -> dict:
    """The whole benchmark (see the module docstring); a JSON-ready dict with ``rows``, ``ratios``, ``profile``.
    ``floors``: RedNet's floors (:data:`FLOORS`) timed beside it.

    Raises
    ------
    AssertionError
        A configuration's logits differ from the plain eager forward, or RedNet's fast op from the taps op, by
        more than :data:`RELATIVE_TOLERANCE` relative.
    """
    import numba
    import torch

    import involution.fast.runtime  # noqa: F401  (numba's threading layer, TBB, chosen before numba starts threads)

    torch.set_num_threads(numba.get_num_threads())
    names = list(dict.fromkeys([*networks, BASELINE]))
    load_before = os.getloadavg()
    compiled_configurations = COMPILED_CONFIGURATIONS[:1] if quick else COMPILED_CONFIGURATIONS
    rows = time_inference(names, batches, rounds, compiled, log, size, compiled_configurations, floors)
    if training:
        rows += time_training(names, max(batches), rounds, compiled, log, size,
                              compiled_configurations + ONEDNN_TRAINING_CONFIGURATIONS, floors)
    result = ratios(rows)
    log(format_ratios(result))
    shares = profile_shares(names, min(batches), log=log, size=size) if profile else {}
    return {"rows": rows, "ratios": result, "profile": shares, "threads": torch.get_num_threads(),
            "size": size, "torch": torch.__version__, "load_average_before": load_before, "load_average_after": os.getloadavg()}


def time_paper_cpu_setting(names=("rednet50", BASELINE), batch: int = 1, rounds: int = 5, log=print) -> list[dict]:
    """Eager inference with torch's oneDNN (mkldnn) convolutions on and off, interleaved: the setting that explains
    the paper's Table 2 CPU times (RedNet-50 211.2 ms, ResNet-50 895.4 ms on a Xeon E5-2660 v4, quoted, not
    reproduced). Off, convolutions take ATen's im2col + GEMM path (``_slow_conv2d_forward``). Rows as
    :func:`time_inference` with ``configuration`` "mkldnn on" / "mkldnn off"."""
    import torch

    images = torch.randn(batch, 3, 224, 224, generator=torch.Generator().manual_seed(batch))
    calls = {}
    for name in names:
        network = build_network(name)
        for enabled in (True, False):
            def call(network=network, enabled=enabled):
                with torch.no_grad(), torch.backends.mkldnn.flags(enabled=enabled):
                    return network(images)
            calls[(name, "mkldnn on" if enabled else "mkldnn off")] = call
    times = interleaved_times(calls, rounds)
    rows = []
    for (name, configuration), seconds in times.items():
        rows.append({"network": name, "mode": "eager", "configuration": configuration, "op_threads": "torch",
                     "batch": batch, **summary(seconds)})
        log(f"{name:>10s} eager {configuration:>10s} batch {batch}  {rows[-1]['median_ms']:8.1f} ms  "
            f"({rows[-1]['min_ms']:.1f} to {rows[-1]['max_ms']:.1f})")
    for configuration in ("mkldnn on", "mkldnn off"):
        time_of = {row["network"]: row["median_ms"] for row in rows if row["configuration"] == configuration}
        log(f"{configuration}: {names[0]} / {BASELINE} = {time_of[names[0]] / time_of[BASELINE]:.2f}")
    return rows


def add_arguments(parser) -> None:
    from involution.arguments import add_force_argument, int_at_least, output_file, positive_int

    parser.add_argument("--networks", nargs="+", choices=NETWORKS, metavar="NAME",
                        help=f"networks timed against resnet50, of {', '.join(NETWORKS)} (default rednet50)")
    parser.add_argument("--batch", type=positive_int, nargs="+", help="batch sizes (default 1 8)")
    parser.add_argument("--repeats", type=positive_int, help="timed rounds, median reported (default 7; quick 3)")
    parser.add_argument("--threads", type=int_at_least(1, os.cpu_count() or 1),
                        help="torch and numba threads (default numba's setting)")
    parser.add_argument("--quick", action="store_true",
                        help="3 rounds, compiled in one memory format, no profile (about 10 minutes on a quiet "
                             "2-core machine with inductor's cache cold)")
    parser.add_argument("--no-compile", action="store_true", help="eager only (no inductor compiling)")
    parser.add_argument("--no-training", action="store_true", help="inference only")
    parser.add_argument("--no-floor", action="store_true",
                        help="without RedNet's floors (its involution layers free stand-ins; also ResNet's stem)")
    parser.add_argument("--paper-cpu-setting", action="store_true",
                        help="instead: RedNet-50 and ResNet-50 eager, batch 1, with torch's mkldnn convolutions on "
                             "and off (the paper's Table 2 CPU times)")
    parser.add_argument("--json", metavar="PATH", type=output_file, help="write the results as JSON")
    add_force_argument(parser)


def run_arguments(args, command: str) -> int:
    import json

    import numba

    import involution.fast.runtime  # noqa: F401  (numba's threading layer, TBB, chosen before numba starts threads)

    if args.threads:
        numba.set_num_threads(args.threads)
    if args.paper_cpu_setting:
        import torch

        torch.set_num_threads(numba.get_num_threads())
        load_before = os.getloadavg()
        rows = time_paper_cpu_setting(rounds=args.repeats or 5)
        results = {"command": command, "rows": rows, "threads": torch.get_num_threads(),
                   "load_average_before": load_before, "load_average_after": os.getloadavg()}
    else:
        results = {"command": command, **run(args.networks or ("rednet50",), args.batch or (1, 8),
                                         args.repeats or (3 if args.quick else 7), not args.no_compile,
                                         not args.no_training, not args.quick, args.quick,
                                         floors=not getattr(args, "no_floor", False))}
    if args.json:
        from involution.arguments import write_atomically

        os.makedirs(os.path.dirname(args.json) or ".", exist_ok=True)
        write_atomically(args.json, json.dumps(results, indent=1))
        print(f"wrote {args.json}")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    if args.json:
        from involution.arguments import prepare_output

        error = prepare_output(args.json, args.force, "--json")  # before any work: an existing file needs --force
        if error:
            parser.error(error)
    return run_arguments(args, " ".join(["python -m involution.benchmarks.networks", *argv]))


if __name__ == "__main__":
    raise SystemExit(main())
