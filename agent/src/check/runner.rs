//! Runs one `check`: every host × port × family probed at once, one lookup per (host, family),
//! the results rendered, and the exit status decided.

use super::args::{check_binding, CheckArgs, CHECK_FLAGS};
use super::{json, table, verdict};
use crate::presets::Presets;
use crate::probe::{self, ProbeOptions, ProbeTarget, Resolution};
use egresswatch_wire::{Family, Level, Outcome, ProbeResult};
use std::collections::{BTreeSet, HashMap};
use std::process::ExitCode;
use std::sync::Arc;

pub fn main(args: CheckArgs) -> ExitCode {
    if let Some(asked) = &args.provider {
        return ExitCode::from(provider_main(&args, asked));
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("egresswatch-agent: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let roots = match probe::tls::load_roots(args.ca_file.as_deref()) {
        Ok(r) => Arc::new(r),
        Err(e) => {
            eprintln!("egresswatch-agent: {e}");
            return ExitCode::from(2);
        }
    };
    if let Err(message) = check_binding(&args.source, args.interface.as_deref(), CHECK_FLAGS) {
        eprintln!("egresswatch-agent: {message}");
        return ExitCode::from(2);
    }
    let options = args.probe_options(roots);
    let (ports, families) = (args.ports(), args.families());
    let (results, mx) = runtime.block_on(async {
        if args.mx {
            let mx = super::mx::targets(
                &args.hosts(),
                &ports,
                &families,
                args.level,
                options.dns_timeout,
            )
            .await;
            let mut results = run_check(&mx.hosts, &ports, &families, args.level, &options).await;
            results.extend(mx.unprobed.iter().cloned());
            (results, Some(mx))
        } else {
            let results = run_check(&args.hosts(), &ports, &families, args.level, &options).await;
            (results, None)
        }
    });
    // A name lookup that outlived its deadline still sits in a blocking thread; dropping the
    // runtime would wait for it, so leave it behind instead.
    runtime.shutdown_background();
    if args.json {
        match json::render_with_mx(&results, mx.as_ref()) {
            Ok(text) => println!("{text}"),
            Err(e) => {
                eprintln!("egresswatch-agent: cannot encode JSON: {e}");
                return ExitCode::from(2);
            }
        }
    } else {
        if let Some(mx) = &mx {
            for note in &mx.notes {
                println!("{note}");
            }
            println!();
            print!(
                "{}",
                table::render_table_labelled(&results, |r| mx.host_label(r))
            );
        } else {
            print!("{}", table::render_table(&results));
        }
        println!();
        for line in verdict::verdict(&results) {
            println!("{line}");
        }
    }
    ExitCode::from(exit_status(&results))
}

/// `check --provider`: the presets (built in, and `--presets` over them), then the preset's
/// probes; `list` prints the presets instead.
fn provider_main(args: &CheckArgs, asked: &str) -> u8 {
    let presets = match Presets::load(args.presets.as_deref()) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("egresswatch-agent: {e}");
            return 2;
        }
    };
    if asked == "list" {
        let text = if args.json {
            match serde_json::to_string_pretty(&super::provider_list::list_json(&presets)) {
                Ok(text) => text + "\n",
                Err(e) => {
                    eprintln!("egresswatch-agent: presets as JSON: {e}");
                    return 2;
                }
            }
        } else {
            crate::presets::render_list(&presets)
        };
        // A reader that stops early (`| head`) is no error of ours.
        use std::io::Write;
        let _ = std::io::stdout().lock().write_all(text.as_bytes());
        return 0;
    }
    let roots = match probe::tls::load_roots(args.ca_file.as_deref()) {
        Ok(r) => Arc::new(r),
        Err(e) => {
            eprintln!("egresswatch-agent: {e}");
            return 2;
        }
    };
    if let Err(message) = check_binding(&args.source, args.interface.as_deref(), CHECK_FLAGS) {
        eprintln!("egresswatch-agent: {message}");
        return 2;
    }
    let options = args.probe_options(roots);
    super::provider::main(asked, &presets, &args.families(), &options, args.json)
}

/// 0 when nothing failed, something was `ok` and every host had an address in some family
/// probed, else 1. A family without an address is no failure while another family of the host
/// has one; a name with no address at all is.
pub fn exit_status(results: &[ProbeResult]) -> u8 {
    if results.iter().all(|r| !r.outcome.is_failure())
        && results.iter().any(|r| r.outcome == Outcome::Ok)
        && verdict::readings::hosts_without_any_address(results).is_empty()
    {
        0
    } else {
        1
    }
}

/// Probes every host × port × family concurrently; results in a stable order.
pub async fn run_check(
    hosts: &[String],
    ports: &[u16],
    families: &[Family],
    level: Level,
    options: &ProbeOptions,
) -> Vec<ProbeResult> {
    // One lookup per (host, family), shared by every port of it.
    let mut lookups = tokio::task::JoinSet::new();
    for host in hosts.iter().collect::<BTreeSet<_>>() {
        for family in families {
            let (host, family, options) = (host.clone(), *family, options.clone());
            lookups.spawn(async move {
                let resolution = probe::resolve_host(&host, family, &options).await;
                (host, family, resolution)
            });
        }
    }
    let mut resolved: HashMap<(String, Family), Resolution> = HashMap::new();
    while let Some(joined) = lookups.join_next().await {
        if let Ok((host, family, resolution)) = joined {
            resolved.insert((host, family), resolution);
        }
    }
    let mut probes = tokio::task::JoinSet::new();
    let mut index = 0usize;
    for host in hosts {
        for port in ports {
            for family in families {
                let Some(resolution) = resolved.get(&(host.clone(), *family)).cloned() else {
                    continue;
                };
                let target = ProbeTarget {
                    host: host.clone(),
                    port: *port,
                    family: *family,
                    level,
                };
                let options = options.clone();
                let at = index;
                index += 1;
                probes.spawn(async move {
                    (
                        at,
                        probe::probe_resolved(&target, &resolution, &options).await,
                    )
                });
            }
        }
    }
    let mut out: Vec<(usize, ProbeResult)> = Vec::with_capacity(index);
    while let Some(joined) = probes.join_next().await {
        if let Ok(pair) = joined {
            out.push(pair);
        }
    }
    out.sort_by_key(|(i, _)| *i);
    out.into_iter().map(|(_, r)| r).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(host: &str, family: Family, outcome: Outcome) -> ProbeResult {
        ProbeResult {
            target: host.into(),
            family,
            outcome,
            ..Default::default()
        }
    }

    #[test]
    fn exit_status_of_names_without_addresses() {
        use Family::{Ipv4, Ipv6};
        use Outcome::{NoAddress, Ok};
        // One family without an address: not a failure while the other has one.
        assert_eq!(exit_status(&[r("a", Ipv4, Ok), r("a", Ipv6, NoAddress)]), 0);
        // No address in any family: a failure of that host, even beside a fine one.
        assert_eq!(
            exit_status(&[r("a", Ipv4, NoAddress), r("a", Ipv6, NoAddress)]),
            1
        );
        assert_eq!(
            exit_status(&[
                r("a", Ipv4, Ok),
                r("b", Ipv4, NoAddress),
                r("b", Ipv6, NoAddress)
            ]),
            1
        );
        // Only one family asked, and the name has none there.
        assert_eq!(exit_status(&[r("a", Ipv6, NoAddress)]), 1);
        assert_eq!(exit_status(&[r("a", Ipv4, Outcome::Timeout)]), 1);
    }
}
