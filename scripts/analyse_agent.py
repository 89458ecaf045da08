"""Analysis figures of a trained plastic agent: M(t) around reward events and its plasticity.

    python scripts/analyse_agent.py --pretrained Hebb-Maze-v0 [--out-dir docs/results]
    python scripts/analyse_agent.py --run-dir runs/my-run [--episodes 100]

Writes <name>_modulation.png (agents with a neuromodulator), <name>_plasticity.png, on
the conditioning tasks <name>_probe.png and <name>_sensors.png, and on the bandit
<name>_reversal.png: the agent's switch to the new good arm beside the references' and those
of the runs given with --compare (say, an LSTM of the same sweep), and its M(t) meanwhile.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from hebbgym.analysis import (
    conditioning_probe,
    plot_agent_reversal,
    plot_conditioning_probe,
    plot_modulation_around_rewards,
    plot_plasticity,
    plot_sensor_weights,
    record_episodes,
    sensor_weights,
)
from hebbgym.pretrained import pretrained_dir
from hebbgym.train.loop import load_agent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--run-dir", type=Path)
    source.add_argument("--pretrained", metavar="ENV_ID")
    parser.add_argument("--episodes", type=int, default=100)
    parser.add_argument("--out-dir", type=Path, default=Path("docs/results"))
    parser.add_argument("--name", help="file name prefix (default: the env id's task name)")
    parser.add_argument(
        "--compare",
        type=Path,
        nargs="+",
        default=[],
        metavar="RUN_DIR",
        help="bandit: other runs whose switch at the reversal is drawn beside this agent's",
    )
    args = parser.parse_args()
    run_dir = args.run_dir or pretrained_dir(args.pretrained)
    config, agent, progress = load_agent(run_dir)
    name = args.name or config.env_id.removeprefix("Hebb-").removesuffix("-v0").lower()
    record = record_episodes(config, agent, args.episodes)
    label = f"{config.env_id}, {config.agent}, {progress['episodes']:,} episodes"
    if record.modulation.shape[-1]:
        out = args.out_dir / f"{name}_modulation.png"
        print(plot_modulation_around_rewards(record, out, f"M(t) around rewards ({label})"))
    print(plot_plasticity(agent, record, args.out_dir / f"{name}_plasticity.png", label))
    if config.env_id.startswith("Hebb-Conditioning"):
        probe = conditioning_probe(config, agent, args.episodes)
        out = args.out_dir / f"{name}_probe.png"
        print(plot_conditioning_probe(probe, out, f"After the learning period ({label})"))
        weights = sensor_weights(config, agent, args.episodes)
        out = args.out_dir / f"{name}_sensors.png"
        print(plot_sensor_weights(weights, out, f"Sensor weights on fear ({label})"))
    if config.env_id == "Hebb-ReversalBandit-v0":
        others = {}
        for other_dir in args.compare:
            other_config, other, _ = load_agent(other_dir)
            name_there = f"{other_config.agent} ({other_dir.name})"
            others[name_there] = record_episodes(other_config, other, args.episodes)
        out = args.out_dir / f"{name}_reversal.png"
        title = f"Around the reversal ({label})"
        path, delays = plot_agent_reversal(config, record, others, out, title)
        for policy, delay in delays.items():
            print(f"{policy}: the new good arm chosen more often than not after {delay} pulls")
        print(path)


if __name__ == "__main__":
    main()
