"""Start-up benchmark: how much of a command's start is luna's own, measured side by side.

    python scripts/bench_startup.py [--repeats 5]

Each measurement is a fresh interpreter (nothing cached in the process; the OS file cache is warm
after the first round, as on a user's second command). Interleaved rounds of:

1. ``import pytorch_lightning``: what any Lightning command pays before its own code.
2. ``import luna.cli.fit``: the training command's imports (Lightning, torch, torchmetrics,
   SimpleITK and luna's modules).
3. ``python -m luna.fit --help`` and ``python -m luna.evaluate --help``, whole.

luna's share is (2) minus (1), medians over the rounds; ``-X importtime`` then names the slowest
modules that luna itself brings in (its own and the third-party ones only it imports). Target:
luna's share under 1 s.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

COMMANDS = {
    "import pytorch_lightning": [sys.executable, "-c", "import pytorch_lightning"],
    "import luna.cli.fit": [sys.executable, "-c", "import luna.cli.fit"],
    "luna.fit --help": [sys.executable, "-m", "luna.fit", "--help"],
    "luna.evaluate --help": [sys.executable, "-m", "luna.evaluate", "--help"],
}


def wall_seconds(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def import_times(code: str) -> dict[str, tuple[int, int]]:
    """``{module: (self µs, cumulative µs)}`` from ``-X importtime``, in import order."""
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", code], capture_output=True, text=True, check=True
    )
    times = {}
    for line in result.stderr.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        own, cumulative, name = line.removeprefix("import time:").split("|")
        times[name.strip()] = (int(own), int(cumulative))
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    wall_seconds(COMMANDS["import luna.cli.fit"])  # warm the file cache once
    seconds = {name: [] for name in COMMANDS}
    for _ in range(args.repeats):
        for name, command in COMMANDS.items():
            seconds[name].append(wall_seconds(command))
    median = {name: statistics.median(values) for name, values in seconds.items()}
    print(f"{'command':<26}{'median s':>10}{'min s':>8}{'max s':>8}   ({args.repeats} fresh processes each)")
    for name, values in seconds.items():
        print(f"{name:<26}{median[name]:>10.2f}{min(values):>8.2f}{max(values):>8.2f}")
    share = median["import luna.cli.fit"] - median["import pytorch_lightning"]
    print(
        f"\nluna's share of `import luna.cli.fit`: {share:.2f} s of {median['import luna.cli.fit']:.2f} s "
        f"({share / median['import luna.cli.fit']:.0%}); target < 1 s"
    )
    print(
        "`luna.fit --help` / `import pytorch_lightning`: "
        f"{median['luna.fit --help'] / median['import pytorch_lightning']:.2f}x"
    )

    lightning = set(import_times("import pytorch_lightning"))
    luna = import_times("import luna.cli.fit")
    only_luna = {name: times for name, times in luna.items() if name not in lightning}
    own = sum(times[0] for name, times in only_luna.items() if name.split(".")[0] == "luna")
    brought = sum(times[0] for name, times in only_luna.items() if name.split(".")[0] != "luna")
    print(
        "\n-X importtime (one process), modules beyond `import pytorch_lightning`: luna's own "
        f"{own / 1e6:.2f} s, "
        f"others {brought / 1e6:.2f} s (Lightning's CLI, SimpleITK, ...)"
    )
    packages: dict[str, int] = {}
    for name, (own_us, _) in only_luna.items():
        packages[name.split(".")[0]] = packages.get(name.split(".")[0], 0) + own_us
    for package, us in sorted(packages.items(), key=lambda item: -item[1])[:8]:
        print(f"  {package:<24}{us / 1e6:>6.2f} s")


if __name__ == "__main__":
    main()
