//! A refused collector config on the real binary: it exits with the key named, before it has
//! written anything — no data dir, no database, no CA, no `quic-reset.key`, no `ready.json`.

mod support;
use std::process::Command;

#[test]
fn a_refused_config_names_the_key_and_writes_nothing() {
    let cases = [
        (
            "[detector]\nfalse_alarm_rate = nan\n",
            "detector.false_alarm_rate",
        ),
        (
            "[detector]\nflap_high_pct = 10.0\nflap_low_pct = 20.0\n",
            "detector.flap_low_pct",
        ),
        (
            "[quic]\nstream_window_bytes = 0\n",
            "quic.stream_window_bytes",
        ),
        ("[http]\ntoken = \"   \"\n", "http.token"),
        (
            "[[alerts]]\nkind = \"webhook\"\nurl = \"http://127.0.0.1:9/\"\nqueue = 0\n",
            "alerts[0].queue",
        ),
    ];
    for (rest, key) in cases {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let config = dir.path().join("collector.toml");
        std::fs::write(&config, format!("data_dir = {data:?}\n{rest}")).unwrap();
        let out = Command::new(support::collector_bin())
            .args(["run", "--config"])
            .arg(&config)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{rest}: {stderr}");
        assert!(stderr.contains(key), "{rest}: {stderr}");
        assert!(
            !data.exists(),
            "{rest}: the data dir was made: {:?}",
            std::fs::read_dir(&data).map(|d| d.count())
        );
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(
            left,
            vec![std::ffi::OsString::from("collector.toml")],
            "{rest}"
        );
    }
}
