//! The login-code hashing pool: every Argon2id hash and verification of a login code (logins,
//! admin creations, code rotations) runs here, on a fixed number of dedicated threads with a
//! bounded queue in front of them.
//!
//! Why a pool of its own: Argon2id is memory-hard by design — at the default 19 MiB per hash,
//! letting every request hash at once (the blocking pool has 512 threads) is a memory
//! exhaustion attack that anyone who can send a login can mount. Here the memory in use is at
//! most `workers × m_cost`, whatever arrives; beyond `workers + queue` waiting jobs callers get
//! [`Error::Busy`] (503 with `Retry-After`) at once instead of piling up.
//!
//! Each worker reuses one block buffer between jobs and frees it after [`IDLE_FREE`] of quiet,
//! so the resident size returns to its baseline after a burst (see `docs/security.md` for the
//! measured figures).

use std::sync::mpsc::{self, RecvTimeoutError, SyncSender, TrySendError};
use std::time::Duration;

use argon2::password_hash::{Output, PasswordHash, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use rand::rngs::OsRng;
use subtle::ConstantTimeEq;
use tokio::sync::oneshot;

use crate::error::{Error, Result};

/// A worker frees its block buffer after this long without work.
pub const IDLE_FREE: Duration = Duration::from_secs(2);
/// Stored hashes asking for more memory than this are refused (they were not made by us).
const MAX_BLOCKS: u32 = 256 * 1024; // 256 MiB
const MAX_PASSES: u32 = 16;

enum Job {
    Hash {
        code: String,
        params: Params,
        reply: oneshot::Sender<Result<String>>,
    },
    Verify {
        hash: String,
        code: String,
        reply: oneshot::Sender<Result<bool>>,
    },
}

/// A handle to the pool; dropping it stops the workers once their queues drain. Each worker
/// has a queue of its own (so that each can notice when it is idle and free its buffer); jobs
/// go round-robin to the first worker with room.
pub struct HashPool {
    queues: Vec<SyncSender<Job>>,
    next: std::sync::atomic::AtomicUsize,
}

impl HashPool {
    /// Starts `workers` threads (at least one) behind a queue of `queue` waiting jobs.
    pub fn new(workers: usize, queue: usize) -> Self {
        tune_allocator();
        let workers = workers.max(1);
        let per_worker = queue.div_ceil(workers).max(1);
        let mut queues = Vec::with_capacity(workers);
        for i in 0..workers {
            let (tx, rx) = mpsc::sync_channel::<Job>(per_worker);
            let spawned = std::thread::Builder::new()
                .name(format!("hash-{i}"))
                .spawn(move || worker(&rx));
            match spawned {
                Ok(_) => queues.push(tx),
                Err(e) => tracing::error!(error = %e, "could not start a hashing worker"),
            }
        }
        Self {
            queues,
            next: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    pub fn workers(&self) -> usize {
        self.queues.len()
    }

    /// Hashes a login code into a PHC string.
    pub async fn hash(&self, code: String, params: Params) -> Result<String> {
        let (reply, rx) = oneshot::channel();
        self.submit(Job::Hash {
            code,
            params,
            reply,
        })?;
        rx.await.map_err(Error::internal)?
    }

    /// Checks a login code against a PHC string, in constant time.
    pub async fn verify(&self, hash: String, code: String) -> Result<bool> {
        let (reply, rx) = oneshot::channel();
        self.submit(Job::Verify { hash, code, reply })?;
        rx.await.map_err(Error::internal)?
    }

    fn submit(&self, mut job: Job) -> Result<()> {
        let n = self.queues.len();
        let start = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        for k in 0..n {
            match self.queues[(start + k) % n].try_send(job) {
                Ok(()) => {
                    metrics::counter!("hub_hash_jobs_total").increment(1);
                    return Ok(());
                }
                Err(TrySendError::Full(j) | TrySendError::Disconnected(j)) => job = j,
            }
        }
        drop(job);
        metrics::counter!("hub_hash_rejected_total").increment(1);
        Err(Error::Busy { retry_after_s: 1 })
    }
}

fn worker(rx: &mpsc::Receiver<Job>) {
    let mut blocks: Vec<Block> = Vec::new();
    loop {
        // Wait for work with the buffer held; let it go after a quiet spell.
        let next = match rx.recv_timeout(IDLE_FREE) {
            Ok(job) => Some(job),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => return,
        };
        let Some(job) = next else {
            blocks = Vec::new();
            continue;
        };
        match job {
            Job::Hash {
                code,
                params,
                reply,
            } => {
                let _ = reply.send(hash_with(&mut blocks, &code, params));
            }
            Job::Verify { hash, code, reply } => {
                let _ = reply.send(verify_with(&mut blocks, &hash, &code));
            }
        }
    }
}

/// Grows the reused buffer to `n` blocks.
fn ensure(blocks: &mut Vec<Block>, n: usize) -> &mut [Block] {
    if blocks.len() < n {
        *blocks = vec![Block::default(); n];
    }
    &mut blocks[..n]
}

fn argon_err(e: impl std::fmt::Display) -> Error {
    Error::internal(anyhow::anyhow!("argon2: {e}"))
}

fn hash_with(blocks: &mut Vec<Block>, code: &str, params: Params) -> Result<String> {
    let salt = SaltString::generate(&mut OsRng);
    let mut salt_buf = [0u8; 64];
    let salt_bytes = salt.decode_b64(&mut salt_buf).map_err(argon_err)?;
    let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone());
    let mut out = [0u8; Params::DEFAULT_OUTPUT_LEN];
    let mem = ensure(blocks, params.block_count());
    argon
        .hash_password_into_with_memory(code.as_bytes(), salt_bytes, &mut out, mem)
        .map_err(argon_err)?;
    let phc = PasswordHash {
        algorithm: Algorithm::Argon2id.ident(),
        version: Some(Version::V0x13.into()),
        params: (&params).try_into().map_err(argon_err)?,
        salt: Some(salt.as_salt()),
        hash: Some(Output::new(&out).map_err(argon_err)?),
    };
    Ok(phc.to_string())
}

fn verify_with(blocks: &mut Vec<Block>, stored: &str, code: &str) -> Result<bool> {
    let parsed = PasswordHash::new(stored).map_err(argon_err)?;
    let algorithm = Algorithm::try_from(parsed.algorithm).map_err(argon_err)?;
    let version = parsed
        .version
        .map(Version::try_from)
        .transpose()
        .map_err(argon_err)?
        .unwrap_or_default();
    let params = Params::try_from(&parsed).map_err(argon_err)?;
    if params.m_cost() > MAX_BLOCKS || params.t_cost() > MAX_PASSES {
        return Err(argon_err("stored hash asks for too much memory or time"));
    }
    let (Some(salt), Some(want)) = (parsed.salt, parsed.hash) else {
        return Err(argon_err("stored hash lacks salt or output"));
    };
    let mut salt_buf = [0u8; 64];
    let salt_bytes = salt.decode_b64(&mut salt_buf).map_err(argon_err)?;
    let want = want.as_bytes();
    let mut got = vec![0u8; want.len()];
    let mem = ensure(blocks, params.block_count());
    Argon2::new(algorithm, version, params)
        .hash_password_into_with_memory(code.as_bytes(), salt_bytes, &mut got, mem)
        .map_err(argon_err)?;
    Ok(bool::from(got.ct_eq(want)))
}

/// glibc's malloc raises its mmap threshold after the first large free, after which 19 MiB
/// hash buffers come from the heap and stay resident when freed. A fixed threshold keeps
/// large buffers mmapped, so freeing them returns the memory to the system.
fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            // SAFETY: mallopt only adjusts allocator tunables; called once.
            unsafe {
                libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> Params {
        Params::new(64, 2, 1, None).unwrap()
    }

    #[tokio::test]
    async fn hashes_verify_and_match_the_reference_implementation() {
        use argon2::password_hash::{PasswordHasher, PasswordVerifier};
        let pool = HashPool::new(1, 4);
        let h = pool.hash("12345678".into(), params()).await.unwrap();
        assert!(pool.verify(h.clone(), "12345678".into()).await.unwrap());
        assert!(!pool.verify(h.clone(), "12345679".into()).await.unwrap());
        // Our PHC strings are the crate's, both ways.
        let parsed = PasswordHash::new(&h).unwrap();
        assert!(
            Argon2::default()
                .verify_password(b"12345678", &parsed)
                .is_ok()
        );
        let salt = SaltString::generate(&mut OsRng);
        let theirs = Argon2::new(Algorithm::Argon2id, Version::V0x13, params())
            .hash_password(b"424242", &salt)
            .unwrap()
            .to_string();
        assert!(pool.verify(theirs.clone(), "424242".into()).await.unwrap());
        assert!(!pool.verify(theirs, "424243".into()).await.unwrap());
    }

    #[tokio::test]
    async fn a_full_queue_answers_busy() {
        let pool = HashPool::new(1, 1);
        let heavy = Params::new(64 * 1024, 4, 1, None).unwrap();
        let jobs: Vec<_> = (0..8)
            .map(|_| pool.hash("1".repeat(8), heavy.clone()))
            .collect();
        let results = futures::future::join_all(jobs).await;
        assert!(
            results.iter().any(|r| matches!(r, Err(Error::Busy { .. }))),
            "some jobs must be refused"
        );
        assert!(results.iter().any(|r| r.is_ok()), "some jobs must run");
    }

    #[tokio::test]
    async fn garbage_stored_hashes_are_errors_not_panics() {
        let pool = HashPool::new(1, 4);
        for bad in [
            "",
            "$argon2id$",
            "plain",
            "$argon2id$v=19$m=999999999,t=1,p=1$c2FsdHNhbHQ$aGFzaA",
        ] {
            assert!(pool.verify(bad.into(), "12345678".into()).await.is_err());
        }
    }
}
