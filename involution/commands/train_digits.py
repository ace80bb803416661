"""Train a tiny RedNet (one involution bottleneck per stage) on scikit-learn's digits with the NumPy layers."""
from __future__ import annotations

import sys
import time

from involution import backends
from involution.arguments import (
    add_force_argument, int_at_least, output_file, positive_float, positive_int, prepare_output, seed,
    write_atomically,
)


def add_arguments(parser) -> None:
    parser.add_argument("--backend", choices=backends.names("numpy"), default="reference",
                        help="NumPy backend of the involution op (default reference)")
    parser.add_argument("--epochs", type=positive_int, default=8, help="training epochs (default 8)")
    parser.add_argument("--size", type=int, choices=(16, 32), default=16, help="image size (default 16)")
    parser.add_argument("--batch-size", type=int_at_least(2), default=32,
                        help="training batch size, 2 to the 1347 training images (default 32)")
    parser.add_argument("--lr", type=positive_float, default=0.1,
                        help="peak learning rate, cosine decay (default 0.1)")
    parser.add_argument("--seed", type=seed, default=0, help="seed of the split, initialisation and order (default 0)")
    parser.add_argument("--out", type=output_file, default=None, metavar="WEIGHTS.npz",
                        help="save the trained weights here (its folder must exist; .npz is appended to a name without "
                             "it, as numpy.savez does; an existing file only with --force)")
    add_force_argument(parser)
    parser.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")


def run(args) -> int:
    """Exit code 0 on success, 2 for options the run rejects before training, 1 if training diverges."""
    from involution.reference.checkpoint import save_npz
    from involution.reference.train import TINY_REDNET, train_digits

    out = None
    if args.out is not None:
        out = args.out if args.out.endswith(".npz") else args.out + ".npz"  # the name save_npz writes
        error = prepare_output(out, args.force, "--out")
        if error:
            print(f"involution train-digits: error: {error}", file=sys.stderr)
            return 2
    print(f"tiny RedNet {TINY_REDNET}, backend {args.backend}, {args.size}x{args.size} digits")
    started = time.perf_counter()
    try:
        history = train_digits(epochs=args.epochs, size=args.size, batch_size=args.batch_size, lr=args.lr,
                               seed=args.seed, backend=args.backend, progress=not args.no_progress)
    except (ImportError, ValueError) as error:
        print(f"involution train-digits: error: {error}", file=sys.stderr)
        return 2
    except FloatingPointError as error:
        print(f"involution train-digits: error: {error}", file=sys.stderr)
        return 1
    if out is not None:
        write_atomically(out, lambda temporary: save_npz(history["model"], temporary))
        print(f"saved weights to {out}")
    print(f"final test accuracy {100 * history['test_accuracy'][-1]:.2f}% after {args.epochs} epochs, "
          f"{time.perf_counter() - started:.1f} s in total")
    return 0
