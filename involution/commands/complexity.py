"""Parameters, MACs and FLOPs of RedNet / ResNet variants and of the paper's detectors, counted analytically
from shapes alone (no weights, no forward pass).

Models: rednet26 .. rednet152 and resnet26 .. resnet152 ("all" or none: the five RedNets); faster_rcnn,
mask_rcnn and semantic_fpn (with --backbone, --neck, --head). --table detection / ablation prints the paper's
Tables 3-4 / ablation rows beside the published values. Conventions (docs/complexity.md): "full" counts every
multiply-add of inference (FLOPs = 2 x MACs + element-wise ops); "published" reproduces the official tables
(mmcv's counter, FLOPs = MACs + element-wise terms); "fvcore" counts conv/linear MACs only (FLOPs = MACs).
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import sys

from involution.arguments import int_list, positive_int

DEPTHS = (26, 38, 50, 101, 152)
FORMATS = ("table", "markdown", "csv", "json")
TABLES = ("detection", "ablation")


def add_arguments(parser) -> None:
    parser.add_argument("models", nargs="*", metavar="MODEL",
                        help="rednet26..rednet152, resnet26..resnet152 or 'all' (default: the five RedNets)")
    parser.add_argument("--depth-list", type=int_list(1),
                        help="comma-separated RedNet depths, e.g. 26,50 (adds rednet<depth>)")
    parser.add_argument("--kernel-size", type=positive_int, default=7, help="involution kernel size K (default 7)")
    parser.add_argument("--group-channels", type=group_channels, default=16,
                        help="channels per involution group, or 'all' (default 16)")
    parser.add_argument("--reduction", type=positive_int, default=4, help="kernel-generation reduction ratio (default 4)")
    parser.add_argument("--kernel-gen", choices=("bottleneck", "linear"), default="bottleneck",
                        help="kernel generator (default bottleneck)")
    parser.add_argument("--num-classes", type=positive_int, default=1000, help="classifier outputs (default 1000)")
    parser.add_argument("--input-size", type=int_list(1, (1, 2)), help="H or H,W (default 224; detectors 1280,800; semantic_fpn 2048,1024)")
    parser.add_argument("--backbone", default="rednet50", help="detector backbone, e.g. rednet50, resnet50 "
                        "(default rednet50)")
    parser.add_argument("--neck", choices=("conv", "involution"), default="conv",
                        help="detector FPN output convs (default conv)")
    parser.add_argument("--head", choices=("conv", "involution"), default="conv",
                        help="RPN head conv and mask head convs of a detector (default conv)")
    parser.add_argument("--stem-kernel-size", type=positive_int, default=7,
                        help="kernel of the detector backbone's stem involution (default 7, the official det/seg "
                             "code; the classifier's is 3)")
    parser.add_argument("--table", choices=TABLES, help="the paper's detection/segmentation rows or ablation rows "
                        "beside the published values (replaces MODEL)")
    parser.add_argument("--convention", choices=("full", "published", "fvcore"),
                        help="what MACs and FLOPs count (default full; --table detection: published, "
                             "--table ablation: fvcore)")
    parser.add_argument("--per-layer", action="store_true", help="also list every layer")
    parser.add_argument("--format", choices=FORMATS, default="table", help="output format (default table)")
    parser.add_argument("--compare", choices=("resnet",), help="add ResNets of the same depths and the %% saved")


def model_names(args) -> list[str]:
    """The models to count, in order, without repeats."""
    names = []
    for name in args.models or (["all"] if not args.depth_list else []):
        names += [f"rednet{depth}" for depth in DEPTHS] if name == "all" else [name]
    if args.depth_list:
        names += [f"rednet{depth}" for depth in args.depth_list]
    if args.compare == "resnet":
        names += [f"resnet{name[len('rednet'):]}" for name in names if name.startswith("rednet")]
    return list(dict.fromkeys(names))


def group_channels(text: str):
    """``"all"`` or a positive int."""
    if text == "all":
        return text
    try:
        return positive_int(text)
    except argparse.ArgumentTypeError as error:
        raise argparse.ArgumentTypeError(f"{error} (or 'all')") from None


def chosen_input_size(sizes: tuple[int, ...] | None, default) -> tuple[int, int]:
    """``--input-size`` (``(H,)`` or ``(H, W)``, checked by its type) as ``(H, W)``, or ``default``."""
    return default if sizes is None else (sizes[0], sizes[-1])


def config_of(name: str, args) -> dict:
    """Constructor options of ``name`` (the involution options only for RedNets)."""
    from involution.reference.complexity import parse_model_name

    family, depth = parse_model_name(name)  # a ValueError naming the valid models otherwise
    config = {"depth": depth, "num_classes": args.num_classes}
    if family == "rednet":
        config.update(kernel_size=args.kernel_size, group_channels=args.group_channels, reduction=args.reduction,
                      kernel_gen=args.kernel_gen)
    return config


def convention_of(args) -> str:
    """``--convention``, or the one that reproduces the chosen table, or ``full``."""
    return args.convention or {"detection": "published", "ablation": "fvcore"}.get(args.table, "full")


def make_record(report, convention, input_size, config, args, published=None) -> dict:
    """One model's totals under ``convention``, its config, the published row and (with ``--per-layer``) its layers."""
    totals = report.total(convention)
    record = {"model": report.model, "params": totals.params, "macs": totals.macs, "flops": totals.flops,
              "convention": convention, "input_size": list(input_size), "config": config}
    if published:
        record["published"] = published
    if args.per_layer:
        record["layers"] = report.rows(convention)
    return record


def classifier_records(args, convention) -> list[dict]:
    from involution.reference.complexity import PUBLISHED, count, describe_model

    input_size = chosen_input_size(args.input_size, (224, 224))
    records = []
    for name in model_names(args):
        config = config_of(name, args)
        options = {key: value for key, value in config.items() if key != "depth"}
        report = count(describe_model(name, **options), input_size, name=name)
        standard = {"depth": config["depth"], "num_classes": 1000, "kernel_size": 7, "group_channels": 16,
                    "reduction": 4, "kernel_gen": "bottleneck"}
        published = PUBLISHED[config["depth"]] if config == standard and input_size == (224, 224) else None
        records.append(make_record(report, convention, input_size, config, args, published))
    return records


def detector_records(args, convention, rows) -> list[dict]:
    """``rows``: ``(model, backbone, neck, head, stem kernel, published or None)``."""
    from involution.reference.detection import DEFAULT_INPUT_SIZE, count_detector

    records = []
    for model, backbone, neck, head, stem_kernel_size, published in rows:
        input_size = chosen_input_size(args.input_size, DEFAULT_INPUT_SIZE[model])
        report = count_detector(model, backbone, neck, head, input_size, stem_kernel_size)
        config = {"model": model, "backbone": backbone, "neck": neck, "head": head}
        if backbone.startswith("rednet"):
            config["stem_kernel_size"] = stem_kernel_size
        if published and input_size != DEFAULT_INPUT_SIZE[model]:
            published = None
        records.append(make_record(report, convention, input_size, config, args, published))
    return records


def ablation_records(args, convention) -> list[dict]:
    from involution.reference.complexity import ABLATION, count, describe_model

    input_size = chosen_input_size(args.input_size, (224, 224))
    records = []
    for option, value, flops_g in ABLATION:
        report = count(describe_model("rednet50", **{option: value}), input_size, name=f"rednet50 {option}={value}")
        published = None
        if input_size == (224, 224):  # rounded once: the ablation's tool is not mmcv (docs/complexity.md)
            published = {"params_m": None, "flops_g": flops_g, "digits": 1, "steps": 1}
        records.append(make_record(report, convention, input_size, {"depth": 50, option: value}, args, published))
    return records


def summarize(args) -> list[dict]:
    """One record per model: counts under the chosen convention, its config and (optionally) its layers."""
    from involution.reference.detection import DETECTORS, DETECTION_TABLE

    convention = convention_of(args)
    if args.table == "detection":
        rows = [(*row[:4], row[4], {"params_m": row[5], "flops_g": row[6], "digits": 1}) for row in DETECTION_TABLE]
        return detector_records(args, convention, rows)
    if args.table == "ablation":
        return ablation_records(args, convention)
    from involution.reference.complexity import parse_model_name

    for name in args.models:
        if name not in DETECTORS and name != "all":
            try:
                parse_model_name(name)
            except ValueError:
                raise ValueError(f"{name!r} is not a model: expected rednet26..rednet152, resnet26..resnet152, "
                                 f"'all' or one of {DETECTORS}") from None
    detectors = [name for name in args.models if name in DETECTORS]
    if detectors and len(detectors) != len(args.models):
        raise ValueError(f"count either detectors {DETECTORS} or classifiers, not both in one call: {args.models}")
    if detectors:
        rows = [(name, args.backbone, args.neck, args.head, args.stem_kernel_size, None) for name in detectors]
        return detector_records(args, convention, rows)
    return classifier_records(args, convention)


def reproduced(record: dict) -> str:
    """``"yes"`` when params and FLOPs, rounded as the paper's tables were, equal the published row, else which
    of them differ."""
    from involution.reference.complexity import round_as_published

    published, digits = record["published"], record["published"].get("digits", 2)
    misses = [label for label, value, scale, target in (("params", record["params"], 1e6, published["params_m"]),
                                                          ("FLOPs", record["flops"], 1e9, published["flops_g"]))
              if target is not None and round_as_published(value / scale, digits, published.get("steps", 2)) != target]
    return "no: " + ", ".join(misses) if misses else "yes"


def summary_rows(records: list[dict], compare: bool, table_mode: bool = False) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the summary table: published figures and differences where they exist, and with
    ``compare`` how much smaller each RedNet is than the ResNet of its depth; ``table_mode`` adds whether
    each published row is reproduced."""
    header = ["model", "params (M)", "MACs (G)", "FLOPs (G)", "published params (M)", "published FLOPs (G)",
              "Δ params (M)", "Δ FLOPs (G)"] + (["reproduced"] if table_mode else [])
    if compare:
        header += ["fewer params vs ResNet", "fewer FLOPs vs ResNet", "published fewer params/FLOPs"]
    by_name = {record["model"]: record for record in records}
    rows = []
    for record in records:
        params, flops = record["params"] / 1e6, record["flops"] / 1e9
        row = [record["model"], f"{params:.4f}", f"{record['macs'] / 1e9:.4f}", f"{flops:.4f}"]
        published = record.get("published")
        if published:
            digits = published.get("digits", 2)
            published_params = published["params_m"]
            row += [f"{published_params:.{digits}f}" if published_params is not None else "",
                    f"{published['flops_g']:.{digits}f}",
                    f"{params - published_params:+.4f}" if published_params is not None else "",
                    f"{flops - published['flops_g']:+.4f}"]
        else:
            row += [""] * 4
        if table_mode:
            row.append(reproduced(record) if published else "")
        baseline = by_name.get(record["model"].replace("rednet", "resnet")) if compare else None
        if baseline and baseline is not record:
            row += [f"{100 * (1 - record['params'] / baseline['params']):.1f}%",
                    f"{100 * (1 - record['flops'] / baseline['flops']):.1f}%",
                    f"{published['fewer_params_pct']}% / {published['fewer_flops_pct']}%" if published else ""]
        elif compare:
            row += [""] * 3
        rows.append(row)
    return header, rows


def shape_text(shape) -> str:
    return "x".join(map(str, shape))


def layer_rows(record: dict) -> tuple[list[str], list[list[str]]]:
    """Header and rows of one model's per-layer table."""
    header = ["layer", "type", "input", "output", "params", "MACs", "FLOPs"]
    rows = [[layer["name"], layer["type"], shape_text(layer["input_shape"]), shape_text(layer["output_shape"]),
             str(layer["params"]), str(layer["macs"]), str(layer["flops"])] for layer in record["layers"]]
    return header, rows


def text_table(header, rows) -> str:
    """Columns padded to their widest cell; numbers right-aligned."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows)]
    lines = ["  ".join(cell.ljust(width) if index == 0 else cell.rjust(width)
                       for index, (cell, width) in enumerate(zip(line, widths))) for line in [header, *rows]]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def markdown_table(header, rows) -> str:
    align = ["---"] + ["---:"] * (len(header) - 1)
    return "\n".join("| " + " | ".join(line) + " |" for line in [header, align, *rows])


PUBLISHED_NOTES = {
    None: "published: the official RedNet README (params of the whole model; FLOPs of mmcv's counter, "
          "1 MAC = 1 FLOP); Δ = ours - published under this convention "
          "(--convention published reproduces the published FLOPs).",
    "detection": "published: the paper's Tables 3-4 (mmdet/mmseg get_flops at 1280x800 / 2048x1024: trainable "
                 "params, mmcv's counter); rows run with the stem kernel given in the config column of --format json; "
                 "reproduced = ours rounded to 2 then 1 decimals equals the table; Δ = ours - published "
                 "(docs/complexity.md explains each row that is not reproduced).",
    "ablation": "published: the paper's ablation table (RedNet-50 at 224x224, FLOPs only); reproduced = ours rounded "
                "once to 1 decimal equals the table; Δ = ours - published (docs/complexity.md).",
}


def render(records: list[dict], args) -> str:
    """The records in ``args.format``."""
    from involution.reference.complexity import FLOPS_DEFINITION, PUBLISHED_DETECTION_DEFINITION

    if args.format == "json":
        return json.dumps(records, indent=2)
    if args.format == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        if args.per_layer:
            writer.writerow(["model", "convention", "layer", "type", "input_shape", "output_shape", "params", "macs",
                             "flops"])
            for record in records:
                for layer in record["layers"]:
                    writer.writerow([record["model"], record["convention"], layer["name"], layer["type"],
                                     shape_text(layer["input_shape"]), shape_text(layer["output_shape"]),
                                     layer["params"], layer["macs"], layer["flops"]])
        else:
            writer.writerow(["model", "convention", "input_h", "input_w", "params", "macs", "flops"])
            for record in records:
                writer.writerow([record["model"], record["convention"], *record["input_size"], record["params"],
                                 record["macs"], record["flops"]])
        return buffer.getvalue().rstrip("\n")
    table = markdown_table if args.format == "markdown" else text_table
    convention = records[0]["convention"]
    sizes = list(dict.fromkeys("x".join(map(str, record["input_size"])) for record in records))
    definition = FLOPS_DEFINITION[convention]
    if convention == "published" and "model" in records[0]["config"]:
        definition = PUBLISHED_DETECTION_DEFINITION
    parts = [f"convention {convention!r} at {', '.join(sizes)}: {definition}.",
             table(*summary_rows(records, args.compare == "resnet", args.table is not None))]
    if any("published" in record for record in records):
        parts.append(PUBLISHED_NOTES[args.table])
    if args.per_layer:
        for record in records:
            parts += [f"\n{record['model']}: per layer", table(*layer_rows(record))]
    return "\n".join(parts)


def run(args) -> int:
    try:
        records = summarize(args)
    except (ValueError, TypeError) as error:
        print(f"involution complexity: error: {error}", file=sys.stderr)
        return 2
    print(render(records, args))
    return 0
