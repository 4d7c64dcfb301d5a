//! Downloading one published file into the cache: resumed where an earlier try
//! stopped (an HTTP range request on the `.part` file), checked against what
//! its publisher states before it takes its final name.

use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use sha1::Sha1;

use crate::digest::{file_digest, hex};

/// Tries of one download within one command (each resumes the last).
const TRIES: usize = 3;

/// What a publisher states about a file, checked after the download.
#[derive(Clone, Debug)]
pub enum Check {
    /// torch.hub's rule: the file name carries the first hex digits of its SHA-256.
    Sha256Prefix(String),
    Sha1(String),
    /// Nothing is published to check against; the reason is printed.
    Unchecked(&'static str),
}

impl Check {
    pub fn describe(&self) -> String {
        match self {
            Check::Sha256Prefix(prefix) => format!("its SHA-256 starts with {prefix}"),
            Check::Sha1(sha1) => format!("its SHA-1 is {sha1}"),
            Check::Unchecked(why) => format!("not checked: {why}"),
        }
    }

    /// Why `path` is not the published file, if it is not.
    fn verify(&self, path: &Path) -> Result<Option<String>> {
        Ok(match self {
            Check::Sha256Prefix(prefix) => {
                let digest = crate::digest::file_sha256(path)?;
                (!digest.starts_with(prefix.as_str()))
                    .then(|| format!("its SHA-256 is {digest}, which does not start with {prefix}"))
            }
            Check::Sha1(expected) => {
                let digest = hex(&file_digest::<Sha1>(path)?);
                (digest != *expected)
                    .then(|| format!("its SHA-1 is {digest}, not the published {expected}"))
            }
            Check::Unchecked(why) => {
                eprintln!("note: {} is not checked: {why}", path.display());
                None
            }
        })
    }
}

/// One file to have at `dest`, from `url`, meeting `check`.
pub struct Download<'a> {
    pub url: &'a str,
    pub dest: &'a Path,
    pub check: &'a Check,
}

/// How a try ended without the whole file.
enum Stopped {
    /// Cut off part-way: the next try resumes.
    Interrupted(String),
    /// Nothing to resume (no connection, an error status).
    Failed(anyhow::Error),
}

impl Download<'_> {
    fn part(&self) -> PathBuf {
        let mut name = self.dest.as_os_str().to_owned();
        name.push(".part");
        PathBuf::from(name)
    }

    /// What to do by hand when this machine cannot download.
    fn by_hand(&self) -> String {
        format!(
            "Without internet, download {} elsewhere and put it at {} ({}); then run this again",
            self.url,
            self.dest.display(),
            self.check.describe()
        )
    }

    /// The file at `dest`: already there and checked, or downloaded and checked.
    pub fn obtain(&self) -> Result<()> {
        if self.dest.exists() {
            if let Some(why) = self.check.verify(self.dest)? {
                bail!(
                    "{} is not the file published at {}: {why}; remove it and run this again",
                    self.dest.display(),
                    self.url
                );
            }
            return Ok(());
        }
        if let Some(dir) = self.dest.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let part = self.part();
        for attempt in 1..=TRIES {
            match self.transfer(&part) {
                Ok(()) => break,
                Err(Stopped::Interrupted(why)) if attempt < TRIES => {
                    eprintln!("{why}; resuming");
                }
                Err(Stopped::Interrupted(why)) => {
                    bail!("{why}; run this again to resume ({})", part.display())
                }
                Err(Stopped::Failed(e)) => bail!("{e:#}.\n{}", self.by_hand()),
            }
        }
        if let Some(why) = self.check.verify(&part)? {
            let _ = std::fs::remove_file(&part);
            bail!(
                "the file downloaded from {} is not the published one: {why} (removed; run this again, \
                 or {})",
                self.url,
                self.by_hand()
            );
        }
        std::fs::rename(&part, self.dest)
            .with_context(|| format!("renaming {} to {}", part.display(), self.dest.display()))
    }

    /// One request, appending to what `part` already holds.
    fn transfer(&self, part: &Path) -> std::result::Result<(), Stopped> {
        let offset = std::fs::metadata(part).map_or(0, |m| m.len());
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_connect(Some(Duration::from_secs(30)))
            .timeout_recv_response(Some(Duration::from_secs(60)))
            .http_status_as_error(false)
            .build()
            .into();
        let mut request = agent.get(self.url);
        if offset > 0 {
            request = request.header("Range", format!("bytes={offset}-"));
        }
        let mut response = request
            .call()
            .map_err(|e| Stopped::Failed(anyhow::anyhow!("cannot download {}: {e}", self.url)))?;
        let status = response.status().as_u16();
        let append = match status {
            206 => true,
            200 => false,
            // The part already holds the whole file.
            416 if offset > 0 => return Ok(()),
            _ => {
                return Err(Stopped::Failed(anyhow::anyhow!(
                    "cannot download {}: the server answered {}",
                    self.url,
                    response.status()
                )));
            }
        };
        let length = response
            .headers()
            .get("content-length")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let start = if append { offset } else { 0 };
        let failed =
            |e: std::io::Error| Stopped::Failed(anyhow::anyhow!("writing {}: {e}", part.display()));
        let mut file = OpenOptions::new()
            .create(true)
            .write(true)
            .append(append)
            .truncate(!append)
            .open(part)
            .map_err(failed)?;
        let progress = crate::progress::bytes_bar(length.map(|l| start + l), start, self.url);
        let mut reader = response.body_mut().with_config().limit(u64::MAX).reader();
        let mut chunk = vec![0u8; 1 << 16];
        let mut received = 0u64;
        loop {
            let read = match reader.read(&mut chunk) {
                Ok(0) => break,
                Ok(read) => read,
                Err(e) => {
                    return Err(Stopped::Interrupted(format!(
                        "the download of {} stopped after {} bytes: {e}",
                        self.url,
                        start + received
                    )));
                }
            };
            file.write_all(&chunk[..read]).map_err(failed)?;
            received += read as u64;
            progress.set_position(start + received);
        }
        file.sync_all().map_err(failed)?;
        progress.finish_and_clear();
        if let Some(length) = length.filter(|&l| received < l) {
            return Err(Stopped::Interrupted(format!(
                "the download of {} stopped after {} of {} bytes",
                self.url,
                start + received,
                start + length
            )));
        }
        Ok(())
    }
}
