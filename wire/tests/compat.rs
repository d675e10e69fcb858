//! Version skew and framing, with bytes made by "other rules": an older peer's records (fewer
//! trailing fields) and a newer peer's (more trailing fields, unknown message kinds).

use egresswatch_wire::frame::{body_len, decode_body, WireMessage};
use egresswatch_wire::limits::MAX_FRAME_BYTES;
use egresswatch_wire::*;
use serde::Serialize;

fn result(seq: u64, port: u16, outcome: Outcome, connect_us: Option<u32>) -> ProbeResult {
    ProbeResult {
        seq,
        at_unix_ms: 1_767_000_000_000 + seq as i64 * 1000,
        target: "mx.lab.example".into(),
        port,
        family: Family::Ipv4,
        level: Level::Connect,
        outcome,
        address: Some("198.18.10.25".parse().unwrap()),
        timings: PhaseTimings {
            connect_us,
            ..Default::default()
        },
        ..Default::default()
    }
}

#[test]
fn batch_round_trips_through_a_frame() {
    let results: Vec<_> = (100..160)
        .map(|s| {
            result(
                s,
                [25, 465, 587, 2525][s as usize % 4],
                Outcome::Ok,
                Some(1200 + s as u32),
            )
        })
        .collect();
    let batch = Batch::pack(&results, ClockQuality::Synchronised, 3).unwrap();
    assert_eq!(batch.series.len(), 4);
    let frame = encode_frame(&AgentMessage::Batch(batch.clone()), MAX_FRAME_BYTES).unwrap();
    let mut dec = FrameDecoder::new(MAX_FRAME_BYTES);
    // Bytes arrive one at a time: still exactly one frame.
    for b in &frame {
        assert!(dec.next_body().unwrap().is_none());
        dec.push(std::slice::from_ref(b));
    }
    let body = dec.next_body().unwrap().unwrap();
    assert_eq!(dec.buffered(), 0);
    match decode_body::<AgentMessage>(&body).unwrap() {
        AgentMessage::Batch(b) => {
            assert_eq!(b, batch);
            assert_eq!(b.unpack().unwrap(), results);
            assert_eq!(b.last_seq(), Some(159));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn typical_result_is_small() {
    let results: Vec<_> = (0..200)
        .map(|s| {
            result(
                s,
                [25, 465, 587, 2525, 443][s as usize % 5],
                Outcome::Ok,
                Some(900 + (s as u32 * 37) % 40_000),
            )
        })
        .collect();
    let batch = Batch::pack(&results, ClockQuality::Synchronised, 0).unwrap();
    let frame = encode_frame(&AgentMessage::Batch(batch), MAX_FRAME_BYTES).unwrap();
    let per_result = frame.len() as f64 / 200.0;
    assert!(per_result <= 16.0, "{per_result} bytes per result");
}

/// What an older agent (wire 1.0 without `status`, `clock` …) would have sent.
#[derive(Serialize)]
struct OldHello(u8, u16, String, (String, String));

/// What a newer agent might send: today's fields plus two it added later.
#[derive(Serialize)]
struct NewerAck(u64, u32, u32, u32, String, u64, String);

#[test]
fn older_bytes_decode_with_defaults() {
    let bytes = rmp_serde::to_vec(&OldHello(
        1,
        0,
        "0.0.9".into(),
        ("aws".into(), "acct-1".into()),
    ))
    .unwrap();
    let hello: Hello = rmp_serde::from_slice(&bytes).unwrap();
    assert_eq!(hello.agent_version, "0.0.9");
    assert_eq!(hello.labels.provider, "aws");
    assert_eq!(hello.labels.account, "acct-1");
    assert!(hello.labels.region.is_empty());
    assert!(hello.targets.is_empty());
    assert_eq!(hello.clock, ClockQuality::Unknown);
}

#[test]
fn newer_trailing_fields_are_ignored() {
    let bytes =
        rmp_serde::to_vec(&NewerAck(77, 5, 1, 0, String::new(), 999, "future".into())).unwrap();
    let ack: Ack = rmp_serde::from_slice(&bytes).unwrap();
    assert_eq!(
        ack,
        Ack {
            up_to_seq: 77,
            accepted: 5,
            duplicates: 1,
            discarded: 0,
            reason: String::new()
        }
    );
}

#[test]
fn missing_required_fields_are_an_error() {
    let bytes = rmp_serde::to_vec(&(77u64, 5u32)).unwrap();
    assert!(rmp_serde::from_slice::<Ack>(&bytes).is_err());
}

fn envelope<T: Serialize>(major: u8, kind: u8, payload: &T, extra: bool) -> Vec<u8> {
    let mut body = Vec::new();
    rmp::encode::write_array_len(&mut body, if extra { 4 } else { 3 }).unwrap();
    rmp::encode::write_uint(&mut body, major.into()).unwrap();
    rmp::encode::write_uint(&mut body, kind.into()).unwrap();
    rmp_serde::encode::write(&mut body, payload).unwrap();
    if extra {
        rmp_serde::encode::write(&mut body, &"envelope extension").unwrap();
    }
    body
}

#[test]
fn unknown_kinds_and_envelope_extensions_are_tolerated() {
    let body = envelope(1, 9, &("something", 1, 2), false);
    assert_eq!(
        decode_body::<CollectorMessage>(&body).unwrap(),
        CollectorMessage::Unknown(9)
    );
    let ack = Ack {
        up_to_seq: 3,
        ..Default::default()
    };
    let body = envelope(1, 2, &ack, true);
    assert_eq!(
        decode_body::<CollectorMessage>(&body).unwrap(),
        CollectorMessage::Ack(ack)
    );
}

#[test]
fn wrong_major_is_refused_with_both_versions() {
    let body = envelope(2, 1, &Hello::default(), false);
    let err = decode_body::<AgentMessage>(&body).unwrap_err();
    assert!(
        matches!(err, WireError::VersionMismatch { theirs: 2, ours: 1 }),
        "{err}"
    );
}

#[test]
fn bad_frames_are_errors_not_panics() {
    assert!(matches!(
        body_len([0, 0, 0, 0], 10),
        Err(WireError::EmptyFrame)
    ));
    assert!(matches!(
        body_len([0xff, 0, 0, 0], MAX_FRAME_BYTES),
        Err(WireError::FrameTooLarge { .. })
    ));
    let mut dec = FrameDecoder::new(16);
    dec.push(&[0, 0, 1, 0]);
    assert!(dec.next_body().is_err());
    // Trailing bytes after a complete envelope.
    let mut body = envelope(1, 2, &Ack::default(), false);
    body.push(0xc0);
    assert!(matches!(
        decode_body::<CollectorMessage>(&body),
        Err(WireError::TrailingBytes { .. })
    ));
    // Garbage of every short length.
    for len in 0..64u8 {
        let junk: Vec<u8> = (0..len)
            .map(|i| i.wrapping_mul(37).wrapping_add(0x90))
            .collect();
        let _ = decode_body::<AgentMessage>(&junk);
    }
    // A batch whose result names a series that is not there.
    let mut batch = Batch::pack(
        &[result(1, 25, Outcome::Ok, Some(5))],
        ClockQuality::Unknown,
        0,
    )
    .unwrap();
    batch.results[0].series = 7;
    assert!(batch.unpack().is_err());
}

#[test]
fn pack_requires_consecutive_sequences() {
    let err = Batch::pack(
        &[
            result(1, 25, Outcome::Ok, None),
            result(3, 25, Outcome::Ok, None),
        ],
        ClockQuality::Unknown,
        0,
    )
    .unwrap_err();
    assert!(err.to_string().contains("consecutive"));
    assert!(Batch::pack(&[], ClockQuality::Unknown, 0).is_err());
}

#[test]
fn every_collector_message_round_trips() {
    for m in [
        CollectorMessage::Welcome(Welcome {
            wire_major: 1,
            wire_minor: 0,
            collector_version: "0.1.0".into(),
            agent_id: "a1".into(),
            acked_seq: 9,
            ..Default::default()
        }),
        CollectorMessage::Welcome(Welcome {
            wire_major: 1,
            wire_minor: 4,
            collector_version: "0.1.0".into(),
            agent_id: "a1".into(),
            acked_seq: 9,
            cert_not_before: 1_700_000_000,
            cert_not_after: 1_700_086_400,
        }),
        CollectorMessage::Renewed(egresswatch_wire::Renewed {
            cert_pem: "-----BEGIN CERTIFICATE-----".into(),
            refused: String::new(),
        }),
        CollectorMessage::Ack(Ack {
            up_to_seq: 10,
            accepted: 1,
            duplicates: 0,
            discarded: 0,
            reason: String::new(),
        }),
        CollectorMessage::Refusal(Refusal {
            reason: "wire major 2 not supported".into(),
            retry_after_s: 0,
        }),
        CollectorMessage::ProbeRequest(ProbeRequest {
            request_id: 77,
            target: "smtp.example.net".into(),
            port: 587,
            family: Family::Ipv6,
            deadline_ms: 6_000,
        }),
    ] {
        let frame = encode_frame(&m, MAX_FRAME_BYTES).unwrap();
        assert_eq!(decode_body::<CollectorMessage>(&frame[4..]).unwrap(), m);
        assert!(m.kind().is_some());
    }
}

/// Wire minor 4: a renewal request crosses a frame; an older collector's welcome (no validity)
/// says nothing about renewal, and the due time is two thirds into a certificate's life.
#[test]
fn renewal_messages_cross_and_are_due_at_two_thirds() {
    let renew = egresswatch_wire::AgentMessage::Renew(egresswatch_wire::Renew {
        csr_der: vec![0x30, 1, 2],
    });
    let frame = encode_frame(&renew, MAX_FRAME_BYTES).unwrap();
    assert_eq!(
        decode_body::<egresswatch_wire::AgentMessage>(&frame[4..]).unwrap(),
        renew
    );
    let old = Welcome {
        wire_major: 1,
        wire_minor: 3,
        collector_version: "0.1.0".into(),
        agent_id: "a1".into(),
        acked_seq: 0,
        ..Default::default()
    };
    let frame = encode_frame(&CollectorMessage::Welcome(old.clone()), MAX_FRAME_BYTES).unwrap();
    let CollectorMessage::Welcome(back) = decode_body::<CollectorMessage>(&frame[4..]).unwrap()
    else {
        panic!("not a welcome")
    };
    assert_eq!((back.cert_not_before, back.cert_not_after), (0, 0));
    use egresswatch_wire::message::{renewal_at, renewal_due};
    assert_eq!(renewal_at(0, 0), None);
    assert_eq!(renewal_at(100, 100), None);
    assert_eq!(renewal_at(1_000, 1_300), Some(1_200));
    assert!(!renewal_due(1_000, 1_300, 1_199));
    assert!(renewal_due(1_000, 1_300, 1_200));
}

/// The DNS failure codes a wire 1.0 peer can decode.
const DNS_FAILURE_CODES_1_0: [u64; 4] = [0, 1, 2, 3];

/// The `dns_failure` codes of a batch's results, read from the bytes as any MessagePack reader
/// would see them (field 10 of each compact result).
fn dns_failure_codes(batch: &Batch) -> Vec<u64> {
    let bytes = rmp_serde::to_vec(batch).unwrap();
    let value: serde_json::Value = rmp_serde::from_slice(&bytes).unwrap();
    value[4]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r.get(10).and_then(serde_json::Value::as_u64))
        .collect()
}

#[test]
fn a_dns_failure_kind_newer_than_the_peer_is_sent_as_other() {
    let mut refused = result(1, 25, Outcome::DnsFailed, None);
    refused.dns_failure = Some(DnsFailure::Refused);
    refused.detail = "refused: 198.18.0.53 answered REFUSED".into();
    let mut servfail = result(2, 25, Outcome::DnsFailed, None);
    servfail.dns_failure = Some(DnsFailure::Servfail);
    let batch = Batch::pack(&[refused, servfail], ClockQuality::Unknown, 0).unwrap();

    // A 1.1 collector gets the kind itself.
    assert_eq!(dns_failure_codes(&batch.clone().for_peer_minor(1)), [4, 2]);
    // A 1.0 collector gets only codes it knows; the detail still names the kind.
    let old = batch.for_peer_minor(0);
    let codes = dns_failure_codes(&old);
    assert_eq!(codes, [0, 2]);
    assert!(codes.iter().all(|c| DNS_FAILURE_CODES_1_0.contains(c)));
    let unpacked = old.unpack().unwrap();
    assert_eq!(unpacked[0].dns_failure, Some(DnsFailure::Other));
    assert!(unpacked[0].detail.contains("REFUSED"));
    assert_eq!(unpacked[1].dns_failure, Some(DnsFailure::Servfail));
}

/// A session step (wire minor 1) crosses a batch, and a result from before it decodes without one.
#[test]
fn the_session_step_crosses_a_batch_and_older_results_lack_it() {
    let mut stalled = result(7, 587, Outcome::NoBanner, Some(900));
    stalled.step = Some(SessionStep::Ehlo);
    stalled.detail = "EHLO got no reply before the deadline".into();
    let batch = Batch::pack(
        std::slice::from_ref(&stalled),
        ClockQuality::Synchronised,
        0,
    )
    .unwrap();
    let bytes = rmp_serde::to_vec(&batch).unwrap();
    let back: Batch = rmp_serde::from_slice(&bytes).unwrap();
    assert_eq!(back.unpack().unwrap(), vec![stalled.clone()]);

    // A wire 1.0 result: every field up to `detail`, no step.
    let mut older = stalled.clone();
    older.step = None;
    let full = rmp_serde::to_vec(&stalled).unwrap();
    let without = rmp_serde::to_vec(&older).unwrap();
    assert!(without.len() < full.len());
    let decoded: ProbeResult = rmp_serde::from_slice(&without).unwrap();
    assert_eq!(decoded.step, None);
    assert_eq!(decoded.outcome, Outcome::NoBanner);
}

/// Wire minor 2: a result says why it ran and which request it answers; a scheduled result costs
/// no byte more than before, and an older collector skips the new fields.
#[test]
fn the_probe_cause_crosses_a_batch_and_scheduled_results_cost_nothing() {
    let scheduled = result(1, 587, Outcome::Timeout, None);
    let mut requested = result(2, 587, Outcome::Timeout, None);
    requested.cause = ProbeCause::Requested;
    requested.request_id = Some(41);
    let mut confirming = result(3, 587, Outcome::Timeout, None);
    confirming.cause = ProbeCause::Confirmation;
    let all = [scheduled.clone(), requested.clone(), confirming.clone()];
    let batch = Batch::pack(&all, ClockQuality::Synchronised, 0).unwrap();
    let back: Batch = rmp_serde::from_slice(&rmp_serde::to_vec(&batch).unwrap()).unwrap();
    assert_eq!(back.unpack().unwrap(), all.to_vec());

    // The trailing defaults are trimmed: a scheduled result is as long as a 1.1 one.
    let mut as_1_1 = scheduled.clone();
    as_1_1.step = None;
    assert_eq!(
        rmp_serde::to_vec(&scheduled).unwrap(),
        rmp_serde::to_vec(&as_1_1).unwrap()
    );
    // A 1.1 hello decodes with `accepts_probe_requests` off, so no request is ever sent to it.
    #[derive(Serialize)]
    struct HelloV11(
        u8,
        u16,
        String,
        Labels,
        Vec<TargetSpec>,
        ClockQuality,
        String,
    );
    let old = rmp_serde::to_vec(&HelloV11(
        1,
        1,
        "0.1.0".into(),
        Labels::default(),
        Vec::new(),
        ClockQuality::Unknown,
        String::new(),
    ))
    .unwrap();
    let hello: Hello = rmp_serde::from_slice(&old).unwrap();
    assert!(!hello.accepts_probe_requests);
    assert_eq!(hello.wire_minor, 1);
}

#[test]
fn a_spool_that_started_over_continues_above_the_high_water_mark() {
    use egresswatch_wire::message::numbering_continues_above;
    // (spool_next_seq, spool_new, high_water) → continue above the mark?
    let cases = [
        // A brand new agent: nothing stored, nothing to continue above.
        ((1, true, 0), false),
        // A new spool (rebuilt machine) behind a stored mark, whether or not it has numbered
        // past the mark while the collector was out of reach.
        ((64, true, 2524), true),
        ((5000, true, 2524), true),
        // An old spool at or behind the mark (a stale spool.dir put back).
        ((2524, false, 2524), true),
        ((10, false, 2524), true),
        // The steady state: the spool is ahead of what is stored.
        ((2525, false, 2524), false),
        ((9000, false, 2524), false),
        // An older agent says nothing (0): nothing is decided for it.
        ((0, false, 2524), false),
        ((0, true, 2524), false),
    ];
    for ((next, new, high_water), expected) in cases {
        assert_eq!(
            numbering_continues_above(next, new, high_water),
            expected,
            "spool_next_seq {next}, spool_new {new}, high_water {high_water}"
        );
    }
    // A 1.2 hello decodes as saying nothing of its spool.
    #[derive(Serialize)]
    struct HelloV12(
        u8,
        u16,
        String,
        Labels,
        Vec<TargetSpec>,
        ClockQuality,
        String,
        bool,
    );
    let old = rmp_serde::to_vec(&HelloV12(
        1,
        2,
        "0.1.0".into(),
        Labels::default(),
        Vec::new(),
        ClockQuality::Unknown,
        String::new(),
        true,
    ))
    .unwrap();
    let hello: Hello = rmp_serde::from_slice(&old).unwrap();
    assert_eq!((hello.spool_next_seq, hello.spool_new), (0, false));
    // A 1.3 hello round-trips its spool's numbering.
    let new = Hello {
        spool_next_seq: 65,
        spool_new: true,
        ..hello
    };
    let back: Hello = rmp_serde::from_slice(&rmp_serde::to_vec(&new).unwrap()).unwrap();
    assert_eq!(back, new);
}
