"""The protocol is written once, as data in dream_link/wire.py, and once for people in
docs/PROTOCOL.md: the two say the same."""

from __future__ import annotations

import re

from conftest import ROOT

from dream_link.wire import JOB_ENDINGS, REQUESTS

FRAME_NAMES = ("image", "mask", "guide", "photo", "exemplars")


def table(title: str) -> list[list[str]]:
    """The rows of the first table after the heading or sentence `title`, as cells."""
    text = (ROOT / "docs" / "PROTOCOL.md").read_text()
    after = text[text.index(title) :]
    rows = re.findall(r"^\|(.+)\|$", after.split("\n\n", 2)[1], re.MULTILINE)
    return [[cell.strip() for cell in row.split("|")] for row in rows[2:]]  # past the rule


def named(cell: str) -> list[str]:
    return re.findall(r"`([a-z_]+)`", cell)


def test_the_table_of_requests_is_the_one_the_server_and_client_use():
    rows = {named(request)[0]: (frames, replies) for request, frames, replies in
            table("## Requests and replies")}  # fmt: skip
    assert set(rows) == set(REQUESTS)
    every_reply = {reply for request in REQUESTS.values() for reply in request.replies}
    for kind, (frames, replies) in rows.items():
        request = REQUESTS[kind]
        plain = re.sub(r"`[^`]*`", "", frames)  # the frames, not the fields that describe them
        said_frames = [word for word in re.findall(r"[a-z]+", plain) if word in FRAME_NAMES]
        optional = re.findall(r"if `([a-z]+)` is given", frames)
        listed = re.findall(r"one for each description in the list `([a-z]+)`", frames)
        assert said_frames == [*request.frames, *request.optional_frames,
                               *request.listed_frames], kind  # fmt: skip
        assert tuple(optional) == request.optional_frames, kind
        assert tuple(listed) == request.listed_frames, kind
        said_replies = {name for name in named(replies) if name in every_reply}
        assert said_replies == set(request.replies), kind


def test_every_reply_that_ends_a_job_is_described():
    described = {named(row[0])[0] for row in table("Replies from the server:")}
    assert set(JOB_ENDINGS) <= described
    assert all(JOB_ENDINGS & set(request.replies) for request in REQUESTS.values() if request.job)
