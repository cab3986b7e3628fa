"""Hypothesis strategies for tag sequences, shared by test_labels and test_align."""

from hypothesis import strategies as st

TYPES = ["PER", "LOC", "ORG", "MISC"]


@st.composite
def iob2_tags(draw, n: int) -> list[str]:
    """A valid IOB2 sequence: I-X only after B-X or I-X."""
    tags: list[str] = []
    for _ in range(n):
        current = tags[-1][2:] if tags and tags[-1] != "O" else None
        options = ["O", "O"] + [f"B-{t}" for t in TYPES] + [f"I-{current}"] * 3 * bool(current)
        tags.append(draw(st.sampled_from(options)))
    return tags
