//! `--processes n`: run the shards of a run as n child processes of this program, each with
//! the flags it was given plus `--shard i/n --shard-dir DIR --json DIR/shard-i-of-n.json
//! --quiet` (its table goes to `DIR/shard-i-of-n.txt`), then merge their reports.

use std::ffi::OsString;
use std::process::{Command, ExitCode, ExitStatus, Stdio};

use anyhow::{Context, Result, bail};

use crate::cli::Args;
use crate::merge;

/// Flags this process sets itself for its children, with whether each takes a value; the
/// user's own are left out of what the children are given.
const OWN_FLAGS: [(&str, bool); 5] = [
    ("--processes", true),
    ("--json", true),
    ("--shard-dir", true),
    ("--quiet", false),
    ("-q", false),
];

/// The arguments of this process that its children get too: all but [`OWN_FLAGS`]
/// (`--flag value` and `--flag=value` alike).
pub fn passed_on(args: impl IntoIterator<Item = OsString>) -> Vec<OsString> {
    let mut out = Vec::new();
    let mut skip_value = false;
    for a in args {
        if std::mem::take(&mut skip_value) {
            continue;
        }
        let text = a.to_string_lossy();
        let own = OWN_FLAGS.iter().find(|(flag, takes_value)| {
            text == *flag || (*takes_value && text.starts_with(&format!("{flag}=")))
        });
        match own {
            Some((flag, takes_value)) => skip_value = *takes_value && text == *flag,
            None => out.push(a),
        }
    }
    out
}

/// Start the n shards, wait for them, merge their reports.
pub async fn run(args: Args, n: u32) -> Result<ExitCode> {
    let dir = match &args.shard_dir {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!(
            "loadtest-shards-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        )),
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let exe = std::env::current_exe().context("finding this program's executable")?;
    let passed = passed_on(std::env::args_os().skip(1));
    if !args.quiet {
        eprintln!(
            "running {n} shards; their reports and tables go to {}",
            dir.display()
        );
    }
    let mut children = Vec::new();
    for i in 1..=n {
        let name = format!("shard-{i}-of-{n}");
        let report = dir.join(format!("{name}.json"));
        let table_path = dir.join(format!("{name}.txt"));
        let table = std::fs::File::create(&table_path)
            .with_context(|| format!("creating {}", table_path.display()))?;
        let child = Command::new(&exe)
            .args(&passed)
            .arg("--shard")
            .arg(format!("{i}/{n}"))
            .arg("--shard-dir")
            .arg(&dir)
            .arg("--json")
            .arg(&report)
            .arg("--quiet")
            .stdin(Stdio::null())
            .stdout(table)
            .spawn()
            .with_context(|| format!("starting shard {i}/{n}"))?;
        children.push((i, report, table_path, child));
    }
    // Ctrl-C reaches the children too (one process group): they stop, report and exit, and
    // this process waits for them instead of dying first.
    tokio::spawn(async { while tokio::signal::ctrl_c().await.is_ok() {} });
    let waited = tokio::task::spawn_blocking(move || {
        children
            .into_iter()
            .map(|(i, report, table, mut c)| (i, report, table, c.wait()))
            .collect::<Vec<_>>()
    })
    .await
    .context("waiting for the shards")?;
    let mut reports = Vec::new();
    let mut failed = Vec::new();
    for (i, report, table, status) in waited {
        let status = status.with_context(|| format!("waiting for shard {i}/{n}"))?;
        if wrote_report(status) {
            reports.push(merge::read_report(&report)?);
        } else {
            failed.push(format!(
                "shard {i}/{n} ({status}; see {} and the messages above)",
                table.display()
            ));
        }
    }
    if !failed.is_empty() {
        bail!("{} failed: {}", plural(failed.len()), failed.join("; "));
    }
    let merged = merge::merge(&reports)?;
    let mut stdout = std::io::stdout().lock();
    merged.print(&mut stdout).context("writing the report")?;
    drop(stdout);
    if let Some(path) = &args.json {
        crate::create_parent(path)?;
        crate::write_json(path, &merged)?;
    }
    Ok(crate::exit_status(&merged))
}

/// A shard that exited 0, 3 (correctness) or 4 (`--strict`) wrote its report.
fn wrote_report(status: ExitStatus) -> bool {
    matches!(status.code(), Some(0 | 3 | 4))
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "a shard" } else { "shards" }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;

    fn os(v: &[&str]) -> Vec<OsString> {
        v.iter().map(|s| OsStr::new(s).to_os_string()).collect()
    }

    #[test]
    fn children_get_every_flag_but_the_parents_own() {
        let given = os(&[
            "--url",
            "http://127.0.0.1:8081",
            "--processes",
            "3",
            "--json=out/merged.json",
            "--url=http://127.0.0.1:8082",
            "-q",
            "--shard-dir",
            "/somewhere",
            "--rate",
            "30",
            "--quiet",
            "--json",
            "x.json",
            "--strict",
        ]);
        assert_eq!(
            passed_on(given),
            os(&[
                "--url",
                "http://127.0.0.1:8081",
                "--url=http://127.0.0.1:8082",
                "--rate",
                "30",
                "--strict",
            ])
        );
        // a flag that merely starts like one of ours is passed on
        assert_eq!(
            passed_on(os(&["--jsonx", "--quieter"])),
            os(&["--jsonx", "--quieter"])
        );
    }
}
