"""Imitation learning: a policy fitted to a controller's demonstrations, run in closed loop.

A point mass in the plane (position p, velocity v; v' = v + 3 dt (f - v), p' = p + dt v',
dt = 0.1) is steered from the left to a goal on the right, around a disc of radius 1 at the
origin, by a hand-written controller: a pull toward the goal, a push away from the disc
with a sideways part that goes around it on the side of the goal, a little Gaussian noise
(sd 0.05) on the force. A run succeeds when it comes within 0.25 of the goal within 60 steps
without touching the disc. The demonstrations end at the goal: each has its own length.

`imitation.dgm` is p(action[t] | observations up to t): a gru over the observations (p, v
and the goal; the state is fully observed, so a Markov policy would do too, but the gru is
the general form), an mlp of its state and the current observation giving the mean force.
`fit` maximizes the exact likelihood of the demonstrated forces. In closed loop the fitted
policy is run one step at a time through the public API: `sample` with the observations so
far and the length n = t + 1 draws the force of step t (steps after n are neither drawn nor
read). We print the success rate of the learned policy and of the demonstrator over the same
200 fresh starts.

    python examples/imitation.py            # full scale: 400 demonstrations, about 2 minutes
    python examples/imitation.py --quick
"""
import matplotlib
import numpy as np
import torch
from _common import HERE, options, wrote

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import dgmlang

STEPS, DT, RADIUS, REACHED, NOISE = 60, 0.1, 1.0, 0.25, 0.05


def starts(rng, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Start positions on the left, goals on the right (the disc in between)."""
    start = np.stack([rng.uniform(-3.5, -2.5, count), rng.uniform(-1.0, 1.0, count)], -1)
    goal = np.stack([rng.uniform(2.5, 3.5, count), rng.uniform(-1.0, 1.0, count)], -1)
    return start, goal


def controller(p: np.ndarray, v: np.ndarray, goal: np.ndarray, rng) -> np.ndarray:
    """The demonstrator's force, (count, 2)."""
    to_goal = goal - p
    distance = np.linalg.norm(to_goal, axis=-1, keepdims=True)
    force = 3.0 * to_goal / np.maximum(distance, 1e-6) * np.minimum(distance, 1.0)
    away = p / np.linalg.norm(p, axis=-1, keepdims=True)  # from the disc's centre
    gap = np.linalg.norm(p, axis=-1, keepdims=True) - RADIUS
    near = np.clip(1.5 - gap, 0.0, None) / 1.5  # 1 at the disc, 0 from 1.5 away
    side = np.sign(away[:, :1] * to_goal[:, 1:] - away[:, 1:] * to_goal[:, :1])  # around toward the goal
    side = np.where(side == 0, 1.0, side)
    around = side * np.concatenate([-away[:, 1:], away[:, :1]], -1)
    force = force + near * (5.0 * away + 5.0 * around)
    force = force * np.minimum(1.0, 4.0 / np.maximum(np.linalg.norm(force, axis=-1, keepdims=True), 1e-6))
    return force + NOISE * rng.normal(size=force.shape)


def roll_out(start, goal, policy, rng):
    """Run `policy(t, obs so far)` in closed loop; returns the observations (count, T, 6),
    the forces (count, T, 2), the steps until the goal (the length) and success flags."""
    count = len(start)
    obs = np.zeros((count, STEPS, 6))
    forces = np.zeros((count, STEPS, 2))
    p, v = start.copy(), np.zeros_like(start)
    done = np.zeros(count, dtype=bool)
    hit = np.zeros(count, dtype=bool)
    length = np.full(count, STEPS)
    for t in range(STEPS):
        obs[:, t] = np.concatenate([p, v, goal], -1)
        f = policy(t, obs, p, v, goal, rng)
        forces[:, t] = f
        v = np.where(done[:, None], v, v + DT * 3.0 * (f - v))
        p = np.where(done[:, None], p, p + DT * v)
        hit |= ~done & (np.linalg.norm(p, axis=-1) < RADIUS)
        arrived = ~done & (np.linalg.norm(p - goal, axis=-1) < REACHED)
        length = np.where(arrived, t + 1, length)
        done |= arrived
    return obs, forces, length, done & ~hit


def demonstrator(t, obs, p, v, goal, rng):
    return controller(p, v, goal, rng)


def learned(model):
    def policy(t, obs, p, v, goal, rng):
        given = {"obs": torch.as_tensor(obs, dtype=torch.float32),
                 "n": torch.full((len(obs),), t + 1)}
        return model.sample(len(obs), given, seed=int(rng.integers(2 ** 31)))["action"][:, t].numpy()
    return policy


args = options(__doc__.splitlines()[0], epochs=0)
torch.set_num_threads(1)
rng = np.random.default_rng(args.seed)
demos, steps, trials = (40, 20, 20) if args.quick else (400, 1500, 200)
obs, forces, length, ok = roll_out(*starts(rng, demos), demonstrator, rng)
print(f"{demos} demonstrations: {ok.mean():.0%} reached the goal, {length.mean():.1f} steps on average")
model = dgmlang.load(HERE / "imitation.dgm")
keep = ok  # imitate the successful demonstrations, each up to its length
losses = model.fit({"obs": obs[keep], "action": forces[keep], "n": length[keep]}, steps=steps,
                   batch_size=64, lr=3e-3, seed=args.seed, progress=False)
print(f"fitted the policy for {steps} steps; final loss {losses[-1]:.1f} nats per demonstration")

fresh = starts(np.random.default_rng(args.seed + 1), trials)
hand_obs, _, hand_length, by_hand = roll_out(*fresh, demonstrator, np.random.default_rng(args.seed + 2))
model_obs, _, model_length, by_model = roll_out(*fresh, learned(model), np.random.default_rng(args.seed + 2))
print(f"success over {trials} fresh starts: learned policy {by_model.mean():.1%}, "
      f"demonstrator {by_hand.mean():.1%}")

# the first fresh starts: each run's path up to the goal, the demonstrator's beside the policy's
fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), sharex=True, sharey=True)
for ax, (title, paths, lengths, ok) in zip(axes, [("demonstrator", hand_obs, hand_length, by_hand),
                                                   ("learned policy, closed loop", model_obs, model_length, by_model)]):
    ax.add_patch(plt.Circle((0, 0), RADIUS, color="0.75"))
    for i in range(min(12, trials)):
        path = paths[i, :lengths[i], :2]
        ax.plot(path[:, 0], path[:, 1], color="tab:blue" if ok[i] else "tab:red", lw=1)
        ax.plot(*fresh[1][i], "k+", ms=6)
    ax.set_title(f"{title}: {ok.mean():.0%} of {trials} succeed", fontsize=9)
    ax.set_aspect("equal")
axes[0].set_xlim(-4, 4)
axes[0].set_ylim(-2.5, 2.5)
fig.tight_layout()
fig.savefig(args.out / "imitation.png", dpi=110)
plt.close(fig)
wrote(args.out / "imitation.png")
