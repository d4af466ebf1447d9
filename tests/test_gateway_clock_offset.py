"""The gateway's server-clock offset from Time reads (IEEE 2030.5-2018 §11.2: clients use the server's
Time resource as their time reference; currentTime has 1 s resolution)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from gateway.client.session import clock_offset

seconds = st.floats(min_value=0, max_value=5, allow_nan=False)


@given(
    true_offset=st.floats(min_value=-1e5, max_value=1e5, allow_nan=False),
    sent=st.floats(min_value=1.7e9, max_value=1.8e9, allow_nan=False),
    serve_after=seconds,
    answer_after=seconds,
)
def test_a_sample_agreeing_with_the_clock_never_moves_it(
    true_offset: float, sent: float, serve_after: float, answer_after: float
) -> None:
    """However slow the answer, a correct offset is kept exactly (a shift of even 1 s would make this
    gateway's controls start or end a second away from the server's, and open gaps between pieces)."""
    served = sent + serve_after
    server_time = int(served + true_offset)
    received = served + answer_after
    assert clock_offset(true_offset, server_time, sent, received) == true_offset


@given(
    true_offset=st.floats(min_value=-1e5, max_value=1e5, allow_nan=False),
    current=st.floats(min_value=-1e5, max_value=1e5, allow_nan=False),
    sent=st.floats(min_value=1.7e9, max_value=1.8e9, allow_nan=False),
    serve_after=seconds,
    answer_after=seconds,
)
def test_a_wrong_offset_moves_to_within_the_sample_uncertainty(
    true_offset: float, current: float, sent: float, serve_after: float, answer_after: float
) -> None:
    served = sent + serve_after
    server_time = int(served + true_offset)
    received = served + answer_after
    new = clock_offset(current, server_time, sent, received)
    # the sample bounds the offset to an interval of width (received - sent) + 1 s; we land inside it
    assert abs(new - true_offset) <= (received - sent) + 1 + 0.002


def test_same_host_answers_keep_a_zero_offset() -> None:
    """Server and gateway on one clock: a Time answer 1.6 s late (a loaded machine) used to give an
    offset of about -1 s; it must stay 0."""
    assert clock_offset(0.0, 1_800_000_000, 1_799_999_999.9, 1_800_000_001.5) == 0.0
    assert clock_offset(0.0, 1_800_000_000, 1_800_000_000.2, 1_800_000_000.3) == 0.0
