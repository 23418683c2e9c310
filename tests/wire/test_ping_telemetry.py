"""PING path telemetry: the metrics added for path reports survive both codecs, in and out."""

from __future__ import annotations

from forehand.wire import FrameDecoder, PathMetric, PathSample, PeerRole, Ping, encode_frame
from forehand.wire._implementation import Codec


def _ping(*samples: PathSample) -> Ping:
    return Ping(sequence=8, sent_us=1_700_000_000_223_456, telemetry=samples)


def test_path_report_metrics_round_trip(codec: Codec) -> None:
    """RTT floor, retransmissions and the probe flag decode to what was encoded."""
    frame = _ping(
        PathSample(
            "edge-eu-1b-03",
            rtt_us=9100,
            jitter_us=400,
            loss_ppm=0,
            throughput_bps=0,
            rtt_min_us=8800,
            retransmissions=2,
            probe=True,
        ),
        PathSample("edge-eu-1a-07", rtt_us=18_250),
    )
    data = encode_frame(frame)
    assert codec.decode_frame(data) == frame
    decoder = FrameDecoder(sender=PeerRole.CLIENT)
    decoder.receive_data(data)
    assert decoder.next_frame() == frame


def test_probe_flag_is_absent_when_false(codec: Codec) -> None:
    """A serving-path sample carries no PROBE metric, so older receivers see the same bytes."""
    serving = encode_frame(_ping(PathSample("s1", rtt_us=5)))
    probed = encode_frame(_ping(PathSample("s1", rtt_us=5, probe=True)))
    assert bytes([PathMetric.PROBE, 1]) not in serving
    assert probed.endswith(bytes([PathMetric.PROBE, 1]))
    assert codec.decode_frame(serving) == _ping(PathSample("s1", rtt_us=5, probe=False))
    assert codec.decode_frame(probed) == _ping(PathSample("s1", rtt_us=5, probe=True))


def test_probe_flag_zero_reads_as_not_probed(codec: Codec) -> None:
    """PROBE with value 0 is legal and means a serving path."""
    body = b"\x08\x01\x01" + b"\x02s1" + b"\x02" + b"\x01\x05" + b"\x07\x00"
    frame = codec.decode_frame(bytes([0x05, len(body)]) + body)
    assert frame == Ping(sequence=8, sent_us=1, telemetry=(PathSample("s1", rtt_us=5),))
