"""DistributedDataParallel with the fast op: 2 gloo processes on the loopback interface (rendezvous through a
file, bounded by timeouts) train a tiny RedNet; every step's averaged gradients and the final parameters equal
one process training on the concatenated batches."""
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("numba")
if not torch.distributed.is_available():
    pytest.skip("torch.distributed is not available in this build", allow_module_level=True)

WORKER = Path(__file__).with_name("ddp_worker.py")
WORLD_SIZE = 2
TIMEOUT_S = 240  # both processes: import torch and numba, load the cached kernels, 3 steps


def load_worker():
    spec = importlib.util.spec_from_file_location("ddp_worker", WORKER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_workers(tmp_path) -> list[dict]:
    """Start the ranks, wait for them (killing both on a timeout), return each rank's saved results."""
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "NUMBA_NUM_THREADS": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(WORKER.parent.parent), os.environ.get("PYTHONPATH")]))}
    rendezvous = tmp_path / "rendezvous"
    processes = [subprocess.Popen([sys.executable, str(WORKER), str(rank), str(WORLD_SIZE), str(rendezvous),
                                   str(tmp_path)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True) for rank in range(WORLD_SIZE)]
    outputs = []
    try:
        for process in processes:
            outputs.append(process.communicate(timeout=TIMEOUT_S)[0])
    except subprocess.TimeoutExpired:
        for process in processes:
            process.kill()
        pytest.fail(f"DDP workers did not finish within {TIMEOUT_S} s")
    for rank, (process, output) in enumerate(zip(processes, outputs)):
        assert process.returncode == 0, f"rank {rank} exited with {process.returncode}:\n{output[-3000:]}"
    return [torch.load(tmp_path / f"rank{rank}.pt") for rank in range(WORLD_SIZE)]


def test_ddp_gradients_equal_one_process_on_the_concatenated_batch(tmp_path):
    worker = load_worker()
    ranks = run_workers(tmp_path)
    images, labels = worker.global_batches(WORLD_SIZE)
    expected = worker.train(worker.build_model(), images, labels)
    eps = torch.finfo(torch.float64).eps
    # The all-reduce averages two per-rank sums where one process sums all samples at once: the results differ
    # only by float64 rounding of a few sums (relative 1e-12 leaves room for ~4500 eps of accumulated error).
    rtol = 2 ** 12 * eps
    for rank, result in enumerate(ranks):
        for step, (got, wanted) in enumerate(zip(result["gradients"], expected["gradients"])):
            assert got.keys() == wanted.keys()
            for name in wanted:
                error = (got[name] - wanted[name]).abs().max().item()
                scale = wanted[name].abs().max().item()
                assert error <= rtol * scale, f"rank {rank} step {step} grad {name}: {error:.2e} vs max {scale:.2e}"
        for name, wanted in expected["parameters"].items():
            error = (result["parameters"][name] - wanted).abs().max().item()
            assert error <= rtol * wanted.abs().max().item(), f"rank {rank} parameter {name}: differs by {error:.2e}"
    assert any(grad.abs().sum() > 0 for grad in expected["gradients"][0].values())


@pytest.mark.slow
def test_ddp_example_trains(tmp_path):
    """examples/ddp_train.py with 2 processes: the loss falls and rank 0 writes a checkpoint the loader reads."""
    from involution.torch import RedNet, load_checkpoint

    script = WORKER.parent.parent / "examples" / "ddp_train.py"
    env = {**os.environ, "NUMBA_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}
    result = subprocess.run([sys.executable, str(script), "--processes", "2", "--epochs", "3", "--samples", "128",
                             "--out", str(tmp_path / "ddp.pth")], env=env, capture_output=True, text=True,
                            timeout=TIMEOUT_S)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    losses = [float(line.split("loss ")[1].split(",")[0]) for line in result.stdout.splitlines()
              if line.startswith("epoch ")]
    assert len(losses) == 3 and losses[-1] < 0.9 * losses[0], result.stdout
    model = RedNet(stage_blocks=(1, 1, 1), stem_channels=32, base_channels=16, kernel_size=3, group_channels=8,
                   num_classes=4)
    assert load_checkpoint(model, tmp_path / "ddp.pth").missing_keys == []
