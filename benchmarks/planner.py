"""Oracle-P benchmark -> docs/research-log.md: can the planner, horizon and budget solve the task?

    python benchmarks/planner.py run --tasks lift --planners cem mppi --seeds 5 [--budget-s 200]
    python benchmarks/planner.py report --tasks lift --planners cem mppi --seeds 5
    python benchmarks/planner.py mpc_timing [--worldmodel PATH] [--student PATH] [--replans 3]

Oracle-P (:class:`agent.oracle.OracleP`) plans in the true simulator (state cloning, no
rendering) against robosuite's dense shaped reward with the planner configs
``experiments/conf/planner/{cem,mppi}.yaml`` (same sample budget for both), on
held-out test seeds (test split offset 0: the closed loop's seeds). Per episode:
success, episode length, planning seconds per executed control step (2 CPU cores
shared with other work: wall times are upper bounds).

``run`` is resumable per episode (one JSON per seed under
``artifacts/benchmarks/planner/``; finished seeds are skipped) and pauses (saving the exact
simulator state mid-episode) after ``--budget-s`` seconds, so the benchmark spans several short commands.
``report`` writes the section from whatever episodes are finished.
"""
from __future__ import annotations

import argparse
import itertools
import json
import pickle
import signal
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

import envs  # noqa: E402
from agent.evaluate import wilson_interval  # noqa: E402
from agent.oracle import OracleP  # noqa: E402
from benchmarks.report import write_section  # noqa: E402
from envs.splits import split_seeds  # noqa: E402

TASKS = {"lift": "roboalign/Lift-v0", "pick_color": "roboalign/PickColor-v0", "stack": "roboalign/Stack-v0"}
OUT = ROOT / "artifacts" / "benchmarks" / "planner"
SPLIT_OFFSET = 0


def planner_cfg(name: str) -> dict:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.load(ROOT / "experiments" / "conf" / "planner" / f"{name}.yaml"))


def _path(task: str, planner: str, seed: int, objective: str = "shaped") -> Path:
    return OUT / f"{task}_{planner}_{objective}" / f"{seed}.json"


def run(tasks, planners, n_seeds: int, budget_s: float, objective: str = "shaped") -> None:
    """Run unfinished episodes until ``budget_s`` is spent; an episode cut by the budget is
    saved (exact simulator state, agent, counters) and resumed by the next call."""
    import torch

    torch.set_num_threads(1)
    signal.signal(signal.SIGTERM, _on_sigterm)
    deadline = time.time() + budget_s
    for task in tasks:
        env = envs.make(TASKS[task])
        for planner in planners:
            cfg = planner_cfg(planner)
            for seed in split_seeds("test", n_seeds, SPLIT_OFFSET):
                path = _path(task, planner, seed, objective)
                if path.exists():
                    continue
                if time.time() > deadline:
                    print(f"budget of {budget_s:.0f} s spent; run again to continue", flush=True)
                    return
                row = _episode(env, OracleP(planner=cfg, objective=objective), path, seed, deadline)
                if row is None:
                    print(f"{task} {planner} seed {seed}: paused (budget spent); run again to continue", flush=True)
                    return
                path.write_text(json.dumps({**row, "task": task, "planner": planner, "objective": objective,
                                            "config": cfg}, indent=1))
                print(f"{task} {planner} seed {seed}: success={row['success']} length={row['length']} "
                      f"failure={row['failure']} plan/step={row['plan_s_per_step']:.2f}s", flush=True)
        env.close()


class _Stop(Exception):
    pass


def _on_sigterm(signum, frame):
    raise _Stop()


def _episode(env, agent: OracleP, path: Path, seed: int, deadline: float) -> dict | None:
    """One oracle-P episode (as ``agent.collect.run_episode``), resumable: returns None
    after saving its progress when ``deadline`` passes."""
    from agent.collect import _failure, _target_z

    partial = path.with_suffix(".partial.pkl")
    partial.parent.mkdir(parents=True, exist_ok=True)
    u = env.unwrapped
    if partial.exists():
        st = pickle.loads(partial.read_bytes())
        agent = st["agent"]
        agent.attach_privileged_env(env)
        env.reset(seed=seed)
        obs, info = u.reset_to(st["sim_state"])
    else:
        agent.attach_privileged_env(env)
        agent.reset(seed=seed)
        obs, info = env.reset(seed=seed)
        st = {"t": 0, "start_z": _target_z(info), "rise": 0.0, "plan_s": 0.0, "replans": 0, "sim_steps": 0}
    limit = u.task.max_episode_steps
    step_s = 0.0

    def pause():  # the real env is between steps; the agent's plan is intact
        st.update(sim_state=u.get_sim_state(), agent=agent)
        partial.write_bytes(pickle.dumps(st))

    while True:
        if time.time() + 2 * step_s > deadline:
            pause()
            return None
        n_log, t0 = len(agent.log), time.time()
        try:
            action = agent.act(obs)
        except _Stop:                # SIGTERM (e.g. `timeout`) during planning: keep the progress
            pause()
            return None
        obs, _, terminated, _, info = u.step(action)
        step_s = max(step_s, time.time() - t0) if agent.log[n_log:] else step_s
        for e in agent.log[n_log:]:
            st["plan_s"] += e["plan_s"]
            st["replans"] += 1
            st["sim_steps"] += e["sim_steps"]
        st["t"] += 1
        st["rise"] = max(st["rise"], _target_z(info) - st["start_z"])
        if terminated or st["t"] >= limit:
            break
    partial.unlink(missing_ok=True)
    return {"seed": seed, "success": bool(info["success"]),
            "length": st["t"], "failure": _failure(info, st["rise"]), "instruction": info["instruction"],
            "wrong_object": bool(info["wrong_object"]), "plan_s": st["plan_s"],
            "plan_s_per_step": st["plan_s"] / st["t"], "replans": st["replans"], "sim_steps": st["sim_steps"]}


def report(tasks, planners, n_seeds: int, objectives=("shaped", "robosuite")) -> str:
    lines = ["| task | planner | objective | episodes | success | 95% CI | length (successes) | plan s / control step "
             "| sim steps / control step | failures |", "|---|---|---|---|---|---|---|---|---|---|"]
    unfinished = []
    for task, planner, objective in itertools.product(tasks, planners, objectives):
        rows = [json.loads(p.read_text()) for s in split_seeds("test", n_seeds, SPLIT_OFFSET)
                if (p := _path(task, planner, s, objective)).exists()]
        if not rows:
            continue
        n, k = len(rows), sum(r["success"] for r in rows)
        lo, hi = wilson_interval(k, n)
        lens = [r["length"] for r in rows if r["success"]]
        steps = sum(r["length"] for r in rows)
        fails = {}
        for r in rows:
            if not r["success"]:
                fails[r["failure"]] = fails.get(r["failure"], 0) + 1
        if task == "pick_color":
            drawn = {i: sum(r["instruction"] == i for r in rows) for i in sorted({r["instruction"] for r in rows})}
            unfinished.append(f"{task} / {planner} / {objective}: instructions drawn by the seeds: "
                              + ", ".join(f"'{i}' x{c}" for i, c in drawn.items()))
        for s in split_seeds("test", n_seeds, SPLIT_OFFSET):
            part = _path(task, planner, s, objective).with_suffix(".partial.pkl")
            if part.exists() and not _path(task, planner, s, objective).exists():
                st = pickle.loads(part.read_bytes())
                unfinished.append(f"{task} / {planner} / {objective}: seed {s} unfinished after {st['t']} "
                                  f"control steps (target rise so far {100 * st['rise']:.1f} cm), not counted")
        lines.append(
            f"| {task} | {planner} | {objective} | {n} | {k / n:.2f} | [{lo:.2f}, {hi:.2f}] | "
            f"{(f'{np.mean(lens):.1f} ({min(lens)}-{max(lens)})') if lens else '-'} | "
            f"{sum(r['plan_s'] for r in rows) / steps:.2f} | {sum(r['sim_steps'] for r in rows) / steps:.0f} | "
            f"{', '.join(f'{f} {c}' for f, c in sorted(fails.items())) or '-'} |")
    cfgs = {p: planner_cfg(p) for p in planners}
    desc = "; ".join(f"**{p}**: " + ", ".join(f"{k}={v}" for k, v in c.items() if k != "name")
                     for p, c in cfgs.items())
    body = (f"Oracle-P: the MPC planner in the true simulator (state cloning, no rendering), scoring "
            f"each candidate by a privileged dense reward summed over its horizon: `robosuite` = robosuite's "
            f"shaped reward (reach + grasp flag + lifted; PickColor: on the instructed cube), `shaped` = "
            f"reach (1 - tanh(10 d)) + the instructed cube's rise as a fraction of the success height - 0.5 "
            f"if a wrong cube was lifted, 2 on success (`agent/oracle.py`); a candidate that succeeds is "
            f"credited the success reward for its remaining steps. Held-out test seeds (test split offset {SPLIT_OFFSET}, the closed loop's seeds), one "
            f"process, torch 1 thread; planning seconds are wall time on 2 shared cores (upper bounds). "
            f"Planner configs (`experiments/conf/planner/`): {desc}.\n\n" + "\n".join(lines))
    if unfinished:
        body += "\n\n" + "\n".join(f"- {u}" for u in unfinished)
    return body


def mpc_timing(worldmodel: str, student: str | None, planners, replans: int) -> str:
    """Planning time of :class:`agent.mpc.WorldModelMPC` on Lift (first test seed): where it goes."""
    import torch

    from agent.mpc import WorldModelMPC
    from worldmodel.judge.student import StudentReward

    torch.set_num_threads(1)
    torch.manual_seed(0)
    reward = StudentReward.from_checkpoint(student) if student else StudentReward().eval()
    env = envs.make(TASKS["lift"])
    lines = ["| planner | candidates / replan | model steps | replans | plan s / replan | world model s | "
             "reward s | plan s / control step |", "|---|---|---|---|---|---|---|---|"]
    for planner in planners:
        cfg = planner_cfg(planner)
        agent = WorldModelMPC(worldmodel, reward, planner=cfg, threads=1)
        agent.reset(seed=0)
        obs, _ = env.reset(seed=split_seeds("test", 1, SPLIT_OFFSET)[0])
        for _ in range(replans * agent.execute):
            obs = env.step(agent.act(obs))[0]
        log = agent.log
        plan, wm, rw = (float(np.mean([e[k] for e in log])) for k in ("plan_s", "wm_s", "reward_s"))
        lines.append(f"| {planner} | {agent.planner.budget} | {agent.planner.param.horizon} | {len(log)} | "
                     f"{plan:.2f} | {wm:.2f} | {rw:.2f} | {agent.planning_time_per_step():.2f} |")
        print(lines[-1], flush=True)
    env.close()
    return (f"`WorldModelMPC` (agent/mpc.py) on Lift, world model `{worldmodel}`, reward "
            f"{'`' + student + '`' if student else 'an untrained StudentReward (timing only)'}; SWR rollouts, all "
            f"candidates of an iteration in one batched rollout from the shared real frame; torch 1 thread on "
            f"2 shared cores.\n\n" + "\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["run", "report", "mpc_timing"])
    ap.add_argument("--worldmodel", default="artifacts/worldmodel/quick/worldmodel.pt")
    ap.add_argument("--student", default=None, help="student checkpoint (default: untrained, timing only)")
    ap.add_argument("--replans", type=int, default=3)
    ap.add_argument("--tasks", nargs="+", default=["lift"], choices=sorted(TASKS))
    ap.add_argument("--planners", nargs="+", default=["cem", "mppi"])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--objective", default="shaped", choices=["shaped", "robosuite"])
    ap.add_argument("--budget-s", type=float, default=200.0, help="pause (resumably) after this many seconds")
    args = ap.parse_args()
    if args.what == "run":
        run(args.tasks, args.planners, args.seeds, args.budget_s, args.objective)
    elif args.what == "mpc_timing":
        body = mpc_timing(args.worldmodel, args.student, args.planners, args.replans)
        write_section("Planner: world-model MPC planning time", body)
    else:
        body = report(args.tasks, args.planners, args.seeds)
        print(body)
        write_section("Planner: oracle-P", body,
                      command=f"python benchmarks/planner.py run --tasks {' '.join(args.tasks)} --planners "
                              f"{' '.join(args.planners)} --seeds {args.seeds} (repeated until done), then "
                              f"`... report` with the same arguments")


if __name__ == "__main__":
    main()
