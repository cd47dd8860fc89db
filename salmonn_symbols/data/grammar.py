"""Varied short English sentences from a small grammar: templates × word slots, drawn by a seeded RNG.

The speech-recognition set of `prepare-weights` (`data/sentences.py`) and the speaker task of the synthetic
benchmark (`data/synthetic.py`) draw their sentences here; the words include the command task's words ("stop",
"play", "louder", ...) inside ordinary sentences.
"""

from __future__ import annotations

import random

__all__ = ["sentences"]

# fmt: off
_NAMES = ("the man", "my brother", "our teacher", "the driver", "a small child", "the doctor", "her friend",
          "the old woman", "my neighbour", "the player", "his mother", "the students", "we", "they", "you", "I")
_VERBS = ("would", "wanted to", "forgot to", "will", "did not", "tried to", "asked me to", "can", "should", "must")
_ACTIONS = ("stop the car", "play the piano", "pause the movie", "read the next page", "repeat the question",
            "shuffle the cards", "mute the radio", "open the door", "close the window", "cook dinner",
            "paint the fence", "wash the dishes", "call the office", "find the keys", "watch the game",
            "clean the kitchen", "write a letter", "buy some bread", "carry the box", "fix the bike",
            "play a song", "stop at the corner", "sing a little louder", "speak a bit quieter", "go to the market")
_TIMES = ("today", "tomorrow", "right now", "after lunch", "every morning", "at night", "on Sunday", "again",
          "before school", "last week", "in the evening", "next time")
_PLACES = ("in the garden", "at the station", "near the river", "in the park", "at home", "in the kitchen",
           "on the bus", "at the office", "by the lake", "in the city")
_THINGS = ("the music", "the baby", "the dog", "the train", "the rain", "the crowd", "the bell", "the wind",
           "the engine", "the phone", "the radio", "the singer")
_STATES = ("is louder than before", "got quieter", "will stop soon", "did not stop", "is very loud",
           "is quiet today", "started to play", "was on pause", "sounds strange", "is on repeat",
           "comes back next", "was muted", "seems happy", "is far away", "woke everyone up")
_TEMPLATES = (
    "{name} {verb} {action}", "{name} {verb} {action} {time}", "{thing} {state}", "{thing} {state} {place}",
    "please {action} {time}", "{name} {verb} {action} {place}", "{time} {thing} {state}",
)
# fmt: on


def sentences(n: int, seed: int = 0) -> list[str]:
    """``n`` distinct sentences drawn from the templates by a seeded RNG, in draw order.

    Raises:
        ValueError: the templates cannot give ``n`` distinct sentences.
    """
    rng, out, seen = random.Random(f"sentences:{seed}"), [], set()
    for _ in range(50 * n):
        slots = dict(
            name=rng.choice(_NAMES),
            verb=rng.choice(_VERBS),
            action=rng.choice(_ACTIONS),
            time=rng.choice(_TIMES),
            place=rng.choice(_PLACES),
            thing=rng.choice(_THINGS),
            state=rng.choice(_STATES),
        )
        text = rng.choice(_TEMPLATES).format(**slots)
        text = text[0].upper() + text[1:] + "."
        if text not in seen:
            seen.add(text)
            out.append(text)
            if len(out) == n:
                return out
    raise ValueError(f"the sentence templates gave only {len(out)} distinct sentences, {n} were asked for")
