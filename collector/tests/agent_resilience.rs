//! The real agent binary against the real collector on loopback, through what a VM does to an
//! agent over months: a config reloaded with SIGHUP (a bad one among them) while results wait in
//! the spool; the wall clock stepped back an hour and forward a day (libfaketime) mid-run; and the
//! spool's disk running full (a tiny tmpfs in a private mount namespace); a rebuilt machine whose
//! spool starts over below what the collector holds; a corrupted spool record. Each ends with
//! every result the agent produced stored exactly once, or its loss told to the collector.
//!
//! The clock test needs libfaketime (Debian package `faketime`); the disk test needs root. Each
//! is skipped with a message when it cannot run.

mod support;

use egresswatch_collector::clock::now_unix_ms;
use egresswatch_collector::store::ResultStore;
use egresswatch_wire::{Family, Outcome};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;
use support::fleet::{probe_target, Agent, Collector};
use support::{is_root, skip, wait_until, Proc};

const HOST_ROOT: &str = "/";

/// The number after `key` in `line` (`not_kept=12`, `before seq 40`).
fn number_after(line: &str, key: &str) -> Option<u64> {
    let rest = &line[line.find(key)? + key.len()..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

#[test]
fn sighup_reloads_targets_and_labels_keeps_the_spool_and_rejects_a_bad_config() {
    let tmp = support::work_dir("ew-agentres-");
    let root = Path::new(HOST_ROOT);
    let mut collector = Collector::start(tmp.path(), 0);
    let (old_port, new_port) = (probe_target(), probe_target());
    let mut agent = Agent::new(tmp.path(), "res-reload", &collector, vec![old_port]);
    agent.settings.account = "before".into();
    agent.settings.extra = "[log]\nlevel = \"info\"\n".into();
    // The collector is down: results wait in the spool.
    collector.stop();
    let mut proc = agent.start();
    assert!(
        agent.wait_log("spool open", Duration::from_secs(20)),
        "log:\n{}",
        agent.log()
    );
    std::thread::sleep(Duration::from_secs(3));

    // A config with an unknown table: rejected, and the running config stays.
    let bad = agent.config_text(&agent.settings) + "[probes]\ntimeout = \"2s\"\n";
    std::fs::write(agent.config_path(), bad).unwrap();
    proc.signal("HUP");
    assert!(
        agent.wait_log("config reload rejected", Duration::from_secs(10)),
        "log:\n{}",
        agent.log()
    );
    assert!(proc.alive(), "a bad config does not stop the agent");

    // A good one: another target, other labels, a louder log, and a spool dir that only a
    // restart may change.
    let mut reloaded = agent.settings.clone();
    reloaded.ports = vec![new_port];
    reloaded.account = "after".into();
    reloaded.extra = "[log]\nlevel = \"debug\"\n".into();
    reloaded.spool = agent.dir.join("elsewhere");
    std::fs::write(agent.config_path(), agent.config_text(&reloaded)).unwrap();
    proc.signal("HUP");
    assert!(
        agent.wait_log("config reloaded", Duration::from_secs(10)),
        "log:\n{}",
        agent.log()
    );
    let log = agent.log();
    assert!(log.contains("spool.dir changed"), "log:\n{log}");
    assert!(log.contains("log level changed"), "log:\n{log}");
    assert!(!reloaded.spool.exists(), "the spool stayed where it was");
    // The new target is probed into the same spool.
    std::thread::sleep(Duration::from_secs(3));

    collector.restart();
    assert!(
        agent.wait_acked(root, 6, Duration::from_secs(40)),
        "what waited in the spool was acked; ledger {:?}; log:\n{}",
        agent.ledger(root),
        agent.log()
    );
    let account_of = |collector: &Collector| {
        collector
            .store()
            .agents()
            .unwrap()
            .into_iter()
            .find(|(meta, _)| meta.agent_id == "res-reload")
            .map(|(meta, _)| meta.labels.account)
    };
    assert_eq!(account_of(&collector).as_deref(), Some("after"));

    // Reloaded while connected: the agent says hello again, with the new labels.
    reloaded.account = "connected".into();
    std::fs::write(agent.config_path(), agent.config_text(&reloaded)).unwrap();
    proc.signal("HUP");
    assert!(
        wait_until(Duration::from_secs(20), || account_of(&collector)
            .as_deref()
            == Some("connected")),
        "the collector heard the new labels; log:\n{}",
        agent.log()
    );
    proc.terminate();
    eprintln!("agent log (shown on failure):\n{}", agent.log());

    agent.settings.ports = vec![new_port];
    agent.settings.account = "connected".into();
    let produced = agent.drain(root);
    collector.assert_exactly_once("res-reload", produced);
    let results = collector.results("res-reload");
    let last_old = results
        .iter()
        .filter(|r| r.port == old_port)
        .map(|r| r.seq)
        .max();
    let first_new = results
        .iter()
        .filter(|r| r.port == new_port)
        .map(|r| r.seq)
        .min();
    let (Some(last_old), Some(first_new)) = (last_old, first_new) else {
        panic!("both targets probed: old up to {last_old:?}, new from {first_new:?}");
    };
    assert!(
        last_old < first_new,
        "the old target stopped when the new one started ({last_old} vs {first_new})"
    );
}

/// libfaketime's preload library, wherever the distribution put it.
fn libfaketime() -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = vec!["/usr/lib/faketime".into(), "/usr/local/lib/faketime".into()];
    if let Ok(entries) = std::fs::read_dir("/usr/lib") {
        dirs.extend(entries.flatten().map(|e| e.path().join("faketime")));
    }
    dirs.into_iter()
        .map(|d| d.join("libfaketime.so.1"))
        .find(|p| p.exists())
}

#[test]
fn wall_clock_steps_neither_burst_nor_stall_nor_disorder_the_results() {
    const TEST: &str = "wall_clock_steps_neither_burst_nor_stall_nor_disorder_the_results";
    let Some(lib) = libfaketime() else {
        skip(
            TEST,
            "libfaketime is not installed (Debian package faketime)",
        );
        return;
    };
    let tmp = support::work_dir("ew-agentres-");
    let root = Path::new(HOST_ROOT);
    let collector = Collector::start(tmp.path(), 0);
    let port = probe_target();
    let mut agent = Agent::new(tmp.path(), "res-clock", &collector, vec![port]);
    // The agent's wall clock is real time plus the offset in this file, read at every call;
    // its monotonic clock stays real.
    let offset_file = tmp.path().join("faketime-offset");
    std::fs::write(&offset_file, "+0\n").unwrap();
    agent.env = vec![
        ("LD_PRELOAD".into(), lib.display().to_string()),
        (
            "FAKETIME_TIMESTAMP_FILE".into(),
            offset_file.display().to_string(),
        ),
        ("FAKETIME_NO_CACHE".into(), "1".into()),
        ("DONT_FAKE_MONOTONIC".into(), "1".into()),
    ];
    let started_unix_ms = now_unix_ms();
    let mut proc = agent.start();
    assert!(
        agent.wait_log("connected to the collector", Duration::from_secs(20)),
        "log:\n{}",
        agent.log()
    );
    // One series per family at 1 s: two results a second, whatever the wall clock says.
    let phase = Duration::from_secs(8);
    std::thread::sleep(phase);
    std::fs::write(&offset_file, "-1h\n").unwrap();
    std::thread::sleep(phase);
    std::fs::write(&offset_file, "+1d\n").unwrap();
    std::thread::sleep(phase);
    assert!(proc.alive(), "log:\n{}", agent.log());
    proc.terminate();
    agent.env.clear();
    let produced = agent.drain(root);
    collector.assert_exactly_once("res-clock", produced);

    // Which step each result was measured under, from its (faked) timestamp.
    const HOUR: i64 = 3_600_000;
    let offset_of = |at: i64| {
        if at < started_unix_ms - HOUR / 2 {
            -HOUR
        } else if at > started_unix_ms + 12 * HOUR {
            24 * HOUR
        } else {
            0
        }
    };
    let results = collector.results("res-clock");
    let mut per_step: BTreeMap<i64, usize> = BTreeMap::new();
    for r in &results {
        *per_step.entry(offset_of(r.at_unix_ms)).or_default() += 1;
    }
    eprintln!("results per wall-clock offset (ms): {per_step:?}");
    // 8 s at two a second: 16 each, give or take scheduling on a busy machine.
    for offset in [-HOUR, 24 * HOUR] {
        let count = per_step.get(&offset).copied().unwrap_or(0);
        assert!(
            (10..=24).contains(&count),
            "{count} results under offset {offset} ms: the schedule burst or stalled"
        );
    }
    // In sequence order, the real time of each result (its timestamp less its step) goes
    // forward: numbering follows the monotonic order of probing, not the wall clock.
    let real: Vec<i64> = results
        .iter()
        .map(|r| r.at_unix_ms - offset_of(r.at_unix_ms))
        .collect();
    for (pair, seqs) in real.windows(2).zip(results.windows(2)) {
        assert!(
            pair[1] >= pair[0] - 1_000,
            "seq {} measured at {} (real) after seq {} at {}",
            seqs[1].seq,
            pair[1],
            seqs[0].seq,
            pair[0]
        );
    }
    // Within a step, one series' results come about a second apart: no burst, no stall.
    for family in [Family::Ipv4, Family::Ipv6] {
        let series: Vec<&egresswatch_wire::ProbeResult> =
            results.iter().filter(|r| r.family == family).collect();
        for pair in series.windows(2) {
            let (a, b) = (pair[0].at_unix_ms, pair[1].at_unix_ms);
            if offset_of(a) != offset_of(b) {
                continue;
            }
            assert!(
                (400..=3_000).contains(&(b - a)),
                "{family:?}: {} ms between seq {} and seq {}",
                b - a,
                pair[0].seq,
                pair[1].seq
            );
        }
    }
    // Phase timings come from the monotonic clock: a loopback connect stays small.
    let connects: Vec<u32> = results
        .iter()
        .filter(|r| r.outcome == Outcome::Ok)
        .map(|r| r.timings.connect_us.expect("an ok connect is timed"))
        .collect();
    assert!(!connects.is_empty());
    assert!(
        connects.iter().all(|us| *us < 500_000),
        "loopback connects (µs): {connects:?}"
    );
}

#[test]
fn a_full_spool_disk_is_survived_counted_told_and_recovered_from() {
    const TEST: &str = "a_full_spool_disk_is_survived_counted_told_and_recovered_from";
    if !is_root() {
        skip(TEST, "needs root for a tmpfs in a private mount namespace");
        return;
    }
    let tmp = support::work_dir("ew-agentres-");
    let mut collector = Collector::start(tmp.path(), 0);
    let ports: Vec<u16> = (0..10).map(|_| probe_target()).collect();
    let mut agent = Agent::new(tmp.path(), "res-disk", &collector, ports);
    let disk = tmp.path().join("spool-disk");
    std::fs::create_dir_all(&disk).unwrap();
    agent.settings.spool = disk.join("spool");
    collector.stop();

    // A 256 KiB tmpfs, seen only by this mount namespace and the agents entered into it, filled
    // up to the spool's 64 KiB reserve plus three pages. It goes when the keeper is killed.
    let keeper_script = "mount -t tmpfs -o size=256k,mode=0700 egresswatch-test-spool \"$1\" \
        && head -c 184320 /dev/zero > \"$1/filler\" && echo ready && exec sleep 600";
    let mut keeper = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "--", "sh", "-c"])
        .arg(keeper_script)
        .arg("sh")
        .arg(&disk)
        .stdout(Stdio::piped())
        .spawn()
        .map(Proc)
        .expect("unshare (util-linux)");
    let mut ready = String::new();
    let stdout = keeper.0.stdout.take().unwrap();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut ready).unwrap();
    assert_eq!(ready.trim(), "ready", "the keeper mounted the tmpfs");
    let inside = PathBuf::from(format!("/proc/{}/root", keeper.pid()));
    agent.wrapper = vec![
        "nsenter".into(),
        format!("--mount=/proc/{}/ns/mnt", keeper.pid()).into(),
        "--".into(),
    ];

    // Ten ports, both families, every second: the disk is full within seconds.
    let mut proc = agent.start();
    const FULL: &str = "results are not kept until there is room";
    assert!(
        agent.wait_log(FULL, Duration::from_secs(40)),
        "log:\n{}",
        agent.log()
    );
    // Neither a crash nor a spin nor a flood of log lines: it keeps probing, and counting.
    let cpu_before = proc.cpu_time();
    std::thread::sleep(Duration::from_secs(4));
    let cpu = proc.cpu_time() - cpu_before;
    assert!(proc.alive(), "log:\n{}", agent.log());
    eprintln!("agent CPU time over 4 s with a full disk: {cpu:?}");
    assert!(
        cpu < Duration::from_secs(2),
        "{cpu:?} of CPU in 4 s: spinning"
    );
    assert_eq!(agent.log().matches(FULL).count(), 1, "logged once");

    // The collector comes back: its acks free the spool's space and writing resumes.
    collector.restart();
    assert!(
        agent.wait_log("spool writable again", Duration::from_secs(40)),
        "log:\n{}",
        agent.log()
    );
    // Then the disk gets room: nothing more is refused.
    std::fs::remove_file(agent.spool_seen_at(&inside).with_file_name("filler")).unwrap();
    std::thread::sleep(Duration::from_secs(4));
    proc.terminate();
    let log = agent.log();
    let not_kept = log
        .lines()
        .filter(|l| l.contains("stopping:"))
        .find_map(|l| number_after(l, "not_kept="))
        .expect("the stop message counts what was not kept");
    eprintln!("agent log (shown on failure):\n{log}");
    assert!(not_kept > 0, "log:\n{log}");
    assert_eq!(log.matches(FULL).count(), 1, "logged once; log:\n{log}");

    let produced = agent.drain(&inside);
    collector.assert_exactly_once("res-disk", produced);
    // The collector was told how many were lost, and before which result, once per note even
    // where a batch was resent after a lost ack.
    let notes: Vec<(u64, u64)> = collector
        .log()
        .lines()
        .filter(|l| l.contains("the agent's spool dropped results before seq"))
        .filter_map(|l| {
            Some((
                number_after(l, "before seq ")?,
                number_after(l, "dropped=")?,
            ))
        })
        .collect();
    let told: BTreeMap<u64, u64> = notes.iter().copied().collect();
    eprintln!("not kept by the agent: {not_kept}; told to the collector: {told:?}");
    assert_eq!(told.values().sum::<u64>(), not_kept);
    assert_eq!(notes.len(), told.len(), "a note counted twice: {notes:?}");
    drop(keeper);
}

/// The stop messages' `key=` figures, in the order the agent stopped.
fn stop_figures(log: &str, key: &str) -> Vec<u64> {
    log.lines()
        .filter(|l| l.contains("stopping:"))
        .filter_map(|l| number_after(l, key))
        .collect()
}

#[test]
fn an_agent_whose_spool_started_over_continues_above_the_stored_mark_and_loses_nothing() {
    let tmp = support::work_dir("ew-agentres-");
    let root = Path::new(HOST_ROOT);
    let mut collector = Collector::start(tmp.path(), 0);
    let mut agent = Agent::new(tmp.path(), "res-restart", &collector, vec![probe_target()]);
    // A first life: its results are stored, and its spool drained.
    let mut proc = agent.start();
    assert!(
        agent.wait_acked(root, 12, Duration::from_secs(40)),
        "ledger {:?}; log:\n{}",
        agent.ledger(root),
        agent.log()
    );
    proc.terminate();
    let high_water = agent.drain(root);
    eprintln!("first life: {high_water} results stored");

    // The machine is rebuilt: the same certificate, an empty spool. The collector is away at
    // first, so what the new spool measures waits in it, numbered from 1.
    std::fs::remove_dir_all(agent.spool_seen_at(root)).unwrap();
    collector.stop();
    agent.settings.interval = "1s".into();
    let mut proc = agent.start();
    assert!(
        agent.wait_log("spool open", Duration::from_secs(20)),
        "log:\n{}",
        agent.log()
    );
    // A few seconds' probes (the ledger says how far the numbering went only at an ack).
    std::thread::sleep(Duration::from_secs(5));
    let back_at = now_unix_ms();
    collector.restart();
    assert!(
        agent.wait_acked(root, high_water + 4, Duration::from_secs(40)),
        "ledger {:?}; log:\n{}",
        agent.ledger(root),
        agent.log()
    );
    proc.terminate();
    let produced = agent.drain(root);
    let log = agent.log();
    eprintln!("agent log (shown on failure):\n{log}");

    // Every number from 1 once: the first life's, then the new spool's right above them.
    collector.assert_exactly_once("res-restart", produced);
    let results = collector.results("res-restart");
    let first_of_new_life = &results[high_water as usize];
    assert!(
        first_of_new_life.at_unix_ms < back_at,
        "what the new spool measured while the collector was away is stored (seq {} at {}, collector back at {back_at})",
        first_of_new_life.seq,
        first_of_new_life.at_unix_ms
    );
    // Said once on each side, and counted.
    const AGENT_SAYS: &str = "numbering continues above it";
    assert_eq!(log.matches(AGENT_SAYS).count(), 1, "log:\n{log}");
    let renumbered = stop_figures(&log, "renumbered=");
    assert_eq!(
        renumbered.iter().sum::<u64>(),
        1,
        "{renumbered:?}; log:\n{log}"
    );
    let collector_log = collector.log();
    let told = format!("its numbering continues above seq {high_water}");
    assert_eq!(
        collector_log
            .matches("its numbering continues above seq")
            .count(),
        1,
        "collector log:\n{collector_log}"
    );
    assert!(
        collector_log.contains(&told),
        "collector log:\n{collector_log}"
    );
    // The counter is the restarted collector's own (the one that welcomed it).
    assert_eq!(collector.counter("egresswatch_ingest_spool_restarts"), 1.0);
}

#[test]
fn a_corrupted_spool_record_is_a_gap_the_collector_is_told_of() {
    let tmp = support::work_dir("ew-agentres-");
    let root = Path::new(HOST_ROOT);
    let mut collector = Collector::start(tmp.path(), 0);
    let mut agent = Agent::new(tmp.path(), "res-corrupt", &collector, vec![probe_target()]);
    // Results wait in the spool while the collector is away.
    collector.stop();
    let mut proc = agent.start();
    assert!(
        agent.wait_log("spool open", Duration::from_secs(20)),
        "log:\n{}",
        agent.log()
    );
    std::thread::sleep(Duration::from_secs(5));
    proc.terminate();

    // One record in the middle of the spool rots: its checksum fails.
    let spool = agent.spool_seen_at(root);
    let segment = std::fs::read_dir(&spool)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "log"))
        .expect("a segment");
    let mut bytes = std::fs::read(&segment).unwrap();
    let mut offset = 0;
    let mut lengths = Vec::new();
    while offset + 8 <= bytes.len() {
        let len = u32::from_le_bytes(bytes[offset..offset + 4].try_into().unwrap()) as usize;
        lengths.push((offset, len));
        offset += 8 + len;
    }
    assert!(lengths.len() >= 4, "{} records spooled", lengths.len());
    let (third, _) = lengths[2];
    bytes[third + 8 + 1] ^= 0xff;
    std::fs::write(&segment, &bytes).unwrap();

    collector.restart();
    let produced = agent.drain(root);
    let log = agent.log();
    eprintln!("agent log (shown on failure):\n{log}");
    assert!(
        log.contains("skipped what could not be read") && log.contains("missing=1"),
        "log:\n{log}"
    );
    // Everything but the rotten one is stored, and the collector heard of that one.
    let stored: Vec<u64> = collector
        .results("res-corrupt")
        .iter()
        .map(|r| r.seq)
        .collect();
    let expected: Vec<u64> = (1..=produced).filter(|&seq| seq != 3).collect();
    assert_eq!(stored, expected);
    let notes: Vec<(u64, u64)> = collector
        .log()
        .lines()
        .filter(|l| l.contains("the agent's spool dropped results before seq"))
        .filter_map(|l| {
            Some((
                number_after(l, "before seq ")?,
                number_after(l, "dropped=")?,
            ))
        })
        .collect();
    assert_eq!(notes, vec![(4, 1)], "collector log:\n{}", collector.log());
}

#[test]
fn a_read_only_spool_is_retried_its_losses_counted_and_told() {
    const TEST: &str = "a_read_only_spool_is_retried_its_losses_counted_and_told";
    if !is_root() {
        skip(
            TEST,
            "needs root for a read-only tmpfs in a private mount namespace",
        );
        return;
    }
    let tmp = support::work_dir("ew-agentres-");
    let collector = Collector::start(tmp.path(), 0);
    let mut agent = Agent::new(tmp.path(), "res-readonly", &collector, vec![probe_target()]);
    let disk = tmp.path().join("ro-disk");
    std::fs::create_dir_all(&disk).unwrap();
    agent.settings.spool = disk.join("spool");

    // A tmpfs mounted read-only, seen only by this mount namespace and the agents entered into
    // it. It goes when the keeper is killed (on drop, also when an assertion fails).
    let keeper_script = "mount -t tmpfs -o size=1m,mode=0700 egresswatch-test-ro \"$1\" \
        && mount -o remount,ro \"$1\" && echo ready && exec sleep 600";
    let mut keeper = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "--", "sh", "-c"])
        .arg(keeper_script)
        .arg("sh")
        .arg(&disk)
        .stdout(Stdio::piped())
        .spawn()
        .map(Proc)
        .expect("unshare (util-linux)");
    let mut ready = String::new();
    let stdout = keeper.0.stdout.take().unwrap();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut ready).unwrap();
    assert_eq!(
        ready.trim(),
        "ready",
        "the keeper mounted the tmpfs read-only"
    );
    let inside = PathBuf::from(format!("/proc/{}/root", keeper.pid()));
    let namespace = format!("--mount=/proc/{}/ns/mnt", keeper.pid());
    agent.wrapper = vec!["nsenter".into(), namespace.clone().into(), "--".into()];

    let mut proc = agent.start();
    assert!(
        agent.wait_log("spool unusable", Duration::from_secs(20)),
        "log:\n{}",
        agent.log()
    );
    // It keeps probing and trying, without spinning.
    let cpu_before = proc.cpu_time();
    std::thread::sleep(Duration::from_secs(4));
    let cpu = proc.cpu_time() - cpu_before;
    assert!(proc.alive(), "log:\n{}", agent.log());
    assert!(
        cpu < Duration::from_secs(2),
        "{cpu:?} of CPU in 4 s: spinning"
    );
    assert!(!agent.spool_seen_at(&inside).exists());

    // The filesystem becomes writable: the spool is made at the next try (at most 60 s away).
    let remounted = Command::new("nsenter")
        .arg(&namespace)
        .args(["--", "mount", "-o", "remount,rw"])
        .arg(&disk)
        .status()
        .unwrap();
    assert!(remounted.success());
    assert!(
        agent.wait_log("spool usable again", Duration::from_secs(70)),
        "log:\n{}",
        agent.log()
    );
    assert!(
        agent.wait_acked(&inside, 2, Duration::from_secs(30)),
        "ledger {:?}; log:\n{}",
        agent.ledger(&inside),
        agent.log()
    );
    proc.terminate();
    let log = agent.log();
    eprintln!("agent log (shown on failure):\n{log}");
    let not_kept = stop_figures(&log, "not_kept=")[0];
    assert!(not_kept > 0, "log:\n{log}");

    let produced = agent.drain(&inside);
    collector.assert_exactly_once("res-readonly", produced);
    let told: u64 = collector
        .log()
        .lines()
        .filter(|l| l.contains("the agent's spool dropped results before seq"))
        .filter_map(|l| number_after(l, "dropped="))
        .sum();
    eprintln!("not kept by the agent: {not_kept}; told to the collector: {told}");
    assert_eq!(told, not_kept, "collector log:\n{}", collector.log());
    drop(keeper);
}

#[test]
fn a_vanished_spool_directory_is_made_again_and_its_losses_told() {
    let tmp = support::work_dir("ew-agentres-");
    let root = Path::new(HOST_ROOT);
    let collector = Collector::start(tmp.path(), 0);
    let mut agent = Agent::new(tmp.path(), "res-vanished", &collector, vec![probe_target()]);
    let mut proc = agent.start();
    assert!(
        agent.wait_acked(root, 6, Duration::from_secs(40)),
        "ledger {:?}; log:\n{}",
        agent.ledger(root),
        agent.log()
    );
    // The directory goes while the agent runs (a cleanup script, a disk unmounted).
    std::fs::remove_dir_all(agent.spool_seen_at(root)).unwrap();
    for said in [
        "the directory is gone: making the spool again",
        "spool usable again",
        "numbering continues above it",
    ] {
        assert!(
            agent.wait_log(said, Duration::from_secs(40)),
            "{said}; log:\n{}",
            agent.log()
        );
    }
    std::thread::sleep(Duration::from_secs(2));
    proc.terminate();
    let log = agent.log();
    eprintln!("agent log (shown on failure):\n{log}");
    let not_kept = stop_figures(&log, "not_kept=")[0];
    assert!(not_kept > 0, "log:\n{log}");

    // Numbering went on above what was stored; what went with the directory was told.
    let produced = agent.drain(root);
    collector.assert_exactly_once("res-vanished", produced);
    let told: u64 = collector
        .log()
        .lines()
        .filter(|l| l.contains("the agent's spool dropped results before seq"))
        .filter_map(|l| number_after(l, "dropped="))
        .sum();
    eprintln!("not kept by the agent: {not_kept}; told to the collector: {told}");
    assert_eq!(told, not_kept, "collector log:\n{}", collector.log());
    assert_eq!(collector.counter("egresswatch_ingest_spool_restarts"), 1.0);
}
