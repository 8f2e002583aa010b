//! Running a parsed stolonctl command against a store: the reads, the writes, the prompts and
//! the output. The decisions are in [`crate::ops`] and [`crate::status`]; this module only moves
//! bytes.
//!
//! Every failure is an `anyhow::Error` whose text is the one line printed on stderr (exit 1).
//! Nothing is written to the store unless every check passed.

use std::io::{BufRead, Write};

use anyhow::{Context, anyhow, bail};
use stolon_core::Timestamp;
use stolon_core::model::ClusterData;
use stolon_store::{ClusterDataRead, Election, Revision, Store, StoreError};

use crate::cli::{ClusterdataCmd, Cmd, RegisterArgs};
use crate::ops::{self, Promotion};
use crate::{confirm, json, status};

/// Version printed by `stolonctl version`.
pub const VERSION: &str = concat!("v", env!("CARGO_PKG_VERSION"));

/// What clap prints after the binary's name for `--version`: cobra's `<name> version <version>`.
pub const VERSION_TEXT: &str = concat!("version v", env!("CARGO_PKG_VERSION"));

/// CAS attempts of `update`, `promote`, `failkeeper` and `removekeeper` before giving up
/// (Stolon's `maxRetries`; Stolon does not retry the two keeper commands).
pub const MAX_RETRIES: usize = 3;

/// The process's standard streams (or test buffers).
pub struct Io<'a> {
    /// Standard input (spec/clusterdata from `-f -`, confirmation answers).
    pub stdin: &'a mut dyn BufRead,
    /// Standard output.
    pub stdout: &'a mut dyn Write,
    /// Standard error (only for non-failure notices; failures are returned).
    pub stderr: &'a mut dyn Write,
}

/// What the command needs from the outside world besides the store.
pub struct Env<'a> {
    /// Generates a new cluster UID (Stolon's 8 hex chars).
    pub new_uid: &'a mut dyn FnMut() -> String,
    /// The current time.
    pub now: &'a dyn Fn() -> Timestamp,
}

/// Runs `cmd` (any command but `version`, which needs no store).
pub async fn run(
    cmd: &Cmd,
    store: &dyn Store,
    election: &dyn Election,
    io: &mut Io<'_>,
    env: &mut Env<'_>,
) -> anyhow::Result<()> {
    match cmd {
        Cmd::Version => {
            writeln!(io.stdout, "stolonctl version {VERSION}")?;
            Ok(())
        }
        Cmd::Register(a) => register(a),
        Cmd::Pause(_) | Cmd::Resume(_) | Cmd::History(_) => {
            crate::operations::run(cmd, store, io).await
        }
        Cmd::Switchover(a) => crate::switchover::run(a, store, io, env).await,
        Cmd::Init(a) => {
            if a.args.len() > 1 {
                bail!("too many arguments");
            }
            let data = match (a.args.first(), a.file.as_str()) {
                (Some(arg), _) => Some(arg.as_bytes().to_vec()),
                (None, "") => None,
                (None, file) => Some(read_input(file, io)?),
            };
            let spec = ops::init_spec(data.as_deref())?;
            if a.if_absent {
                return init_if_absent(store, spec, io, env).await;
            }
            let current = get(store).await?;
            if current.data.is_some() {
                writeln!(
                    io.stdout,
                    "WARNING: The current cluster data will be removed"
                )?;
            }
            writeln!(
                io.stdout,
                "WARNING: The databases managed by the keepers will be overwritten depending on the provided cluster spec."
            )?;
            if !a.yes && !confirm::ask(io.stdin, io.stdout, confirm::PROMPT)? {
                writeln!(io.stdout, "exiting")?;
                return Ok(());
            }
            let cd = ops::init_cluster_data(spec, (env.new_uid)(), (env.now)());
            // Stolon's init overwrites whatever is there: an unconditional put.
            store
                .force_put_cluster_data(&cd)
                .await
                .map_err(|e| anyhow!("cannot update cluster data: {e}"))?;
            Ok(())
        }
        Cmd::Update(a) => {
            if a.args.len() > 1 {
                bail!("too many arguments");
            }
            let data = match (a.args.first(), a.file.as_str()) {
                (None, "") => bail!(
                    "no cluster spec provided as argument and no file provided (--file/-f option)"
                ),
                (Some(_), f) if !f.is_empty() => bail!(
                    "only one of cluster spec provided as argument or file must provided (--file/-f option)"
                ),
                (Some(arg), _) => arg.as_bytes().to_vec(),
                (None, file) => read_input(file, io)?,
            };
            cas_loop(store, |cd| {
                let current = cd
                    .cluster
                    .as_ref()
                    .and_then(|c| c.spec.as_ref())
                    .ok_or_else(|| anyhow!("no cluster spec available"))?;
                let new = ops::proposed_spec(current, &data, a.patch)?;
                ops::update_spec(cd, new).map(Some)
            })
            .await
        }
        Cmd::Spec(a) => {
            let (cd, _) = get_checked(store).await?;
            writeln!(io.stdout, "{}", ops::render_spec(&cd, a.defaults)?)?;
            Ok(())
        }
        Cmd::Status(a) => {
            let text = match a.format.as_str() {
                "" | "text" => true,
                "json" => false,
                other => bail!("unrecognised output format {other}"),
            };
            let leader = election
                .leader()
                .await
                .map_err(|e| anyhow!("cannot get leader sentinel info: {e}"))?;
            let sentinels = store
                .get_sentinels_info()
                .await
                .map_err(|e| anyhow!("cannot get sentinels info: {e}"))?;
            let proxies = store
                .get_proxies_info()
                .await
                .map_err(|e| anyhow!("cannot get proxies info: {e}"))?;
            let (cd, _) = get_checked(store).await?;
            let st = status::build(&sentinels, leader.as_deref(), &proxies, &cd);
            if text {
                write!(io.stdout, "{}", status::render_text(&st, &cd))?;
            } else {
                writeln!(io.stdout, "{}", status::render_json(&st)?)?;
            }
            Ok(())
        }
        Cmd::Clusterdata(ClusterdataCmd::Read(a)) => {
            let (cd, _) = get_checked(store).await?;
            let text = if a.pretty {
                json::tab_indented(&cd)?
            } else {
                json::compact(&cd)?
            };
            if a.file.is_empty() || a.file == "-" {
                writeln!(io.stdout, "{text}")?;
            } else {
                write_file_atomically(&a.file, text.as_bytes()).map_err(|e| {
                    anyhow!(
                        "unable to write cluster data into file {}, reason: {e:#}",
                        a.file
                    )
                })?;
            }
            Ok(())
        }
        Cmd::Clusterdata(ClusterdataCmd::Write(a)) => {
            let file = if a.file.is_empty() { "-" } else { &a.file };
            let data = read_input(file, io)?;
            let cd = ops::parse_cluster_data(&data)?;
            let exists = match store.get_cluster_data().await {
                Ok(r) => r.data.is_some(),
                // An undecodable document is there too; --yes may replace it.
                Err(StoreError::Format { .. }) => true,
                Err(e) => bail!("cannot get cluster data: {e}"),
            };
            if exists {
                if !a.yes {
                    bail!("WARNING: cluster data already available use --yes to override");
                }
                writeln!(
                    io.stdout,
                    "WARNING: The current cluster data will be removed"
                )?;
            }
            store
                .force_put_cluster_data(&cd)
                .await
                .map_err(|e| anyhow!("failed to write cluster data into new store {e}"))?;
            writeln!(
                io.stdout,
                "successfully wrote cluster data into the new store"
            )?;
            Ok(())
        }
        Cmd::Failkeeper(a) => {
            let uid = one_keeper_uid(&a.args)?;
            cas_loop(store, |cd| ops::fail_keeper(cd, uid).map(Some)).await
        }
        Cmd::Removekeeper(a) => {
            let uid = one_keeper_uid(&a.args)?;
            cas_loop(store, |cd| ops::remove_keeper(cd, uid).map(Some)).await
        }
        Cmd::Promote(a) => {
            if !a.args.is_empty() {
                bail!("too many arguments");
            }
            // Like Stolon: confirm first, then read.
            if !a.yes && !confirm::ask(io.stdin, io.stdout, confirm::PROMPT)? {
                writeln!(io.stdout, "exiting")?;
                return Ok(());
            }
            let mut already_master = false;
            cas_loop(store, |cd| match ops::promote(cd)? {
                Promotion::AlreadyMaster => {
                    already_master = true;
                    Ok(None)
                }
                Promotion::Write(next) => Ok(Some(*next)),
            })
            .await?;
            if already_master {
                writeln!(io.stderr, "cluster spec role already set to master")?;
            }
            Ok(())
        }
    }
}

/// `register`: the flags are checked as Stolon checks them, then the command refuses, since
/// stolon-rs has no Consul client.
pub fn register(a: &RegisterArgs) -> anyhow::Result<()> {
    if a.register_backend != "consul" {
        bail!("unknown register backend: {:?}", a.register_backend);
    }
    if a.register_endpoints.contains(',') {
        bail!(
            "consul does not support multiple endpoints: {}",
            a.register_endpoints
        );
    }
    bail!(
        "register: Consul service registration is not supported by stolon-rs (register backend {:?})",
        a.register_backend
    )
}

fn one_keeper_uid(args: &[String]) -> anyhow::Result<&str> {
    match args {
        [] => bail!("keeper uid required"),
        [uid] => Ok(uid),
        _ => bail!("too many arguments"),
    }
}

/// `init --if-absent`: one compare-and-create of fresh cluster data. Whatever the store already
/// holds (even a document this version cannot decode) is left alone; only a store failure is an
/// error, so a retrying caller (the Helm chart's init Job) can never overwrite a live cluster.
async fn init_if_absent(
    store: &dyn Store,
    spec: stolon_core::model::ClusterSpec,
    io: &mut Io<'_>,
    env: &mut Env<'_>,
) -> anyhow::Result<()> {
    let cd = ops::init_cluster_data(spec, (env.new_uid)(), (env.now)());
    match store.put_cluster_data(&cd, None).await {
        Ok(_) => {
            writeln!(io.stdout, "cluster data initialised")?;
            Ok(())
        }
        Err(StoreError::Conflict) => {
            writeln!(
                io.stdout,
                "cluster data already present: left unchanged (--if-absent)"
            )?;
            Ok(())
        }
        Err(e) => bail!("cannot initialise cluster data: {e}"),
    }
}

async fn get(store: &dyn Store) -> anyhow::Result<ClusterDataRead> {
    store
        .get_cluster_data()
        .await
        .map_err(|e| anyhow!("cannot get cluster data: {e}"))
}

/// Reads clusterdata and checks it (present, format 1, valid spec), with its revision.
pub(crate) async fn get_checked(store: &dyn Store) -> anyhow::Result<(ClusterData, Revision)> {
    let read = get(store).await?;
    let cd = ops::check_cluster_data(read.data)?;
    let rev = read
        .revision
        .ok_or_else(|| anyhow!("cannot get cluster data: no revision for the clusterdata key"))?;
    Ok((cd, rev))
}

/// Read, compute, compare-and-swap; on a conflict start over, at most [`MAX_RETRIES`] times.
/// `next` returning `None` means nothing to write.
pub(crate) async fn cas_loop(
    store: &dyn Store,
    mut next: impl FnMut(&ClusterData) -> anyhow::Result<Option<ClusterData>>,
) -> anyhow::Result<()> {
    for _ in 0..MAX_RETRIES {
        let (cd, rev) = get_checked(store).await?;
        let Some(new) = next(&cd)? else {
            return Ok(());
        };
        match store.put_cluster_data(&new, Some(&rev)).await {
            Ok(_) => return Ok(()),
            Err(StoreError::Conflict) => continue,
            Err(e) => bail!("cannot update cluster data: {e}"),
        }
    }
    bail!("failed to update cluster data after {MAX_RETRIES} retries")
}

/// Reads a whole file, or stdin for `-`.
fn read_input(file: &str, io: &mut Io<'_>) -> anyhow::Result<Vec<u8>> {
    let mut data = Vec::new();
    if file == "-" {
        io.stdin
            .read_to_end(&mut data)
            .map_err(|e| anyhow!("cannot read from stdin: {e}"))?;
    } else {
        data = std::fs::read(file).map_err(|e| anyhow!("cannot read file: {file}: {e}"))?;
    }
    Ok(data)
}

/// Writes `data` to `path` through a temp file in the same directory, fsync and rename, so the
/// file is never half-written.
fn write_file_atomically(path: &str, data: &[u8]) -> anyhow::Result<()> {
    let path = std::path::Path::new(path);
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| anyhow!("not a file path"))?
        .to_string_lossy();
    let tmp = dir.join(format!(".{name}.tmp{}", std::process::id()));
    let result = (|| -> anyhow::Result<()> {
        let mut f = std::fs::File::create(&tmp).context("create temp file")?;
        f.write_all(data).context("write temp file")?;
        f.sync_all().context("sync temp file")?;
        std::fs::rename(&tmp, path).context("rename temp file")?;
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
#[path = "app_tests.rs"]
mod tests;
