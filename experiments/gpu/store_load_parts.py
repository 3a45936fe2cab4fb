"""Where a load from the executable store goes: each entry's read, its sha256 check, the unpickle,
and XLA's deserialization and load onto the device (serialize_executable.deserialize_and_load),
timed apart (issue 13 item 5: on the H200 a switched-to program loaded in 0.9-1.7 s,
BENCHMARKS.md 10.27). The priming call that CompileCache makes after a load is not here: it
needs the program's arguments (what it adds is load_s minus these parts).

  python experiments/gpu/store_load_parts.py --store=/tmp/knapspec_cache/executables

Run it in the process kind the entries were written for (same JAX, device and flags: after
run_switch_worker.sh, in the same call). Prints one line per entry and writes --output (JSON).

Then each entry is loaded once more in a background thread, as CompileCache loads a switched-to
program, while this thread runs Python in a loop: the share of its loop rate it kept beside the
load and its longest stall say how much of the load holds the GIL, that is, stops the decoding
thread's host loop (on the 2-vCPU Intel Xeon, the smoke shapes' 0.2-0.4 MB CPU entries, 15-48
ms loads: the loop kept 72-84% of its rate, BENCHMARKS.md 10.34). And, at each
--switch_intervals, how late a thread that naps 1 ms at a time wakes beside the load (the
decoding thread waits on the device with the GIL released, then needs it to dispatch). A device whose driver
serializes a module load with kernel launches loses more than that; this does not see it
(switch_cost.py's AR beside a load does).
"""

from __future__ import annotations

import hashlib
import json
import pathlib
import pickle
import sys
import threading
import time

from absl import app, flags

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))
import jax  # noqa: E402
from jax.experimental import serialize_executable  # noqa: E402

_STORE = flags.DEFINE_string("store", None, "The executable store's directory.", required=True)
_REPEATS = flags.DEFINE_integer("repeats", 2, "Loads of each entry (the first and the median of "
                                "the rest are both reported when > 1).")
_OUTPUT = flags.DEFINE_string("output", None, "JSON path for the records.")
_SWITCH = flags.DEFINE_list("switch_intervals", ["0.005", "0.0005"], "Python switch intervals "
                            "(sys.setswitchinterval, seconds; 0.005 is Python's default) at "
                            "which a waking thread's wait beside a load is timed.")


def load_parts(path: pathlib.Path) -> dict:
  """Seconds of each part of one load of the entry at path, and its size."""
  start = time.perf_counter()
  data = path.read_bytes()
  read = time.perf_counter()
  if hashlib.sha256(data[32:]).digest() != data[:32]:
    raise ValueError(f"{path}: damaged entry (its sha256 does not match)")
  checked = time.perf_counter()
  entry = pickle.loads(data[32:])
  unpickled = time.perf_counter()
  devices = [d for d in jax.devices() if d.id in entry["devices"]]
  compiled = serialize_executable.deserialize_and_load(
      entry["payload"], entry["in_tree"], entry["out_tree"], execution_devices=devices)
  loaded = time.perf_counter()
  program = entry["key"].splitlines()[1] if "\n" in entry["key"] else "?"
  del compiled
  return dict(entry=path.name, program=program, megabytes=len(data) / 1e6,
              payload_megabytes=len(entry["payload"]) / 1e6, read_s=read - start,
              sha256_s=checked - read, unpickle_s=unpickled - checked,
              deserialize_and_load_s=loaded - unpickled, total_s=loaded - start)


def python_beside(fn, seconds_alone: float = 0.3) -> dict:
  """fn() in a background thread while this thread counts in a Python loop: the loop's rate
  beside it over its rate beside a sleeping thread, and the longest gap between checkpoints of
  the loop (a stall: the GIL held elsewhere)."""
  def rate(target):
    finished = threading.Event()
    took = []
    def run():
      start = time.perf_counter()
      target()
      took.append(time.perf_counter() - start)
      finished.set()
    thread = threading.Thread(target=run)
    count, marks = 0, [time.perf_counter()]
    thread.start()
    while not finished.is_set():
      count += 1
      if count % 5000 == 0:
        marks.append(time.perf_counter())
    marks.append(time.perf_counter())
    thread.join()
    return count / (marks[-1] - marks[0]), took[0], max(b - a for a, b in zip(marks, marks[1:]))
  alone, _, _ = rate(lambda: time.sleep(seconds_alone))
  beside, took, stall = rate(fn)
  return dict(beside_load_s=took, python_rate_kept=beside / alone, longest_stall_ms=stall * 1e3)


def wake_lateness(fn, switch_interval: float, nap_s: float = 0.001) -> dict:
  """fn() in a background thread while this thread naps nap_s at a time (the GIL released, as
  the decoding thread waits on the device) and times how late each wake is, under
  sys.setswitchinterval(switch_interval): a thread that wakes while another holds the GIL waits
  for it (up to the switch interval while that one runs Python, a whole C call while it runs
  one). Per 1000 wakes: the lateness beside fn, and beside a sleeping thread (the OS's share)."""
  def naps(target):
    finished = threading.Event()
    def run():
      target()
      finished.set()
    thread = threading.Thread(target=run)
    late = []
    thread.start()
    while not finished.is_set():
      start = time.perf_counter()
      time.sleep(nap_s)
      late.append(time.perf_counter() - start - nap_s)
    thread.join()
    return late
  default = sys.getswitchinterval()
  sys.setswitchinterval(switch_interval)
  try:
    quiet = naps(lambda: time.sleep(0.2))
    beside = naps(fn)
  finally:
    sys.setswitchinterval(default)
  per_1000 = lambda late: 1e3 * sum(late) / len(late) * 1e3  # ms per 1000 wakes
  return dict(switch_interval_s=switch_interval, wakes=len(beside),
              late_ms_per_1000_wakes=per_1000(beside), quiet_ms_per_1000_wakes=per_1000(quiet),
              longest_late_ms=1e3 * max(beside))


def main(argv):
  del argv
  store = pathlib.Path(_STORE.value)
  entries = sorted(store.glob("*.jaxexe"))
  if not entries:
    raise app.UsageError(f"no entries (*.jaxexe) in {store}")
  records = []
  for path in entries:
    runs = [load_parts(path) for _ in range(max(_REPEATS.value, 1))]
    record = dict(runs[0], later_total_s=(sorted(r["total_s"] for r in runs[1:])[
        (len(runs) - 2) // 2] if len(runs) > 1 else None))
    record.update(python_beside(lambda: load_parts(path)))
    record["wakes"] = [wake_lateness(lambda: load_parts(path), float(s)) for s in _SWITCH.value]
    records.append(record)
    print(f"{record['program'][-40:]:40s} {record['megabytes']:7.1f} MB: read "
          f"{record['read_s'] * 1e3:7.1f} ms, sha256 {record['sha256_s'] * 1e3:6.1f} ms, unpickle "
          f"{record['unpickle_s'] * 1e3:6.1f} ms, deserialize and load "
          f"{record['deserialize_and_load_s'] * 1e3:7.1f} ms; total {record['total_s']:.3f} s"
          + (f" (a later load {record['later_total_s']:.3f} s)" if len(runs) > 1 else "")
          + f"; beside a Python loop ({record['beside_load_s']:.3f} s) the loop kept "
          f"{record['python_rate_kept']:.0%} of its rate, longest stall "
          f"{record['longest_stall_ms']:.1f} ms", flush=True)
    for w in record["wakes"]:
      print(f"  switch interval {w['switch_interval_s'] * 1e3:g} ms: a thread waking every ms "
            f"beside the load waited {w['late_ms_per_1000_wakes']:.1f} ms per 1000 wakes "
            f"({w['quiet_ms_per_1000_wakes']:.1f} beside a sleeping thread; {w['wakes']} wakes, "
            f"the longest {w['longest_late_ms']:.1f} ms)", flush=True)
  if _OUTPUT.value:
    out = pathlib.Path(_OUTPUT.value)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(records, indent=1))
    print(f"wrote {out} ({len(records)} records)")


if __name__ == "__main__":
  app.run(main)
