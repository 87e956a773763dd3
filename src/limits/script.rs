//! A Lua script run in Redis by its SHA-1 (`EVALSHA`), loaded once with `SCRIPT LOAD`
//! (Redis computes the digest), and sent whole (`EVAL`) when the node does not have it
//! (restarted, failed over, another cluster node) or scripts cannot be loaded (an ACL
//! that forbids `SCRIPT`). Every command goes through [`AnswerCache::command`]: behind
//! the Redis breaker and `redis.timeout_ms`.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

use deadpool_redis::redis;

use crate::pipeline::cache::{AnswerCache, RedisFailure};

/// A Lua script and, once known, its digest.
pub struct Script {
    code: &'static str,
    sha: OnceLock<String>,
    /// `SCRIPT LOAD` was refused: always `EVAL`.
    eval_only: AtomicBool,
}

impl Script {
    pub const fn new(code: &'static str) -> Script {
        Script {
            code,
            sha: OnceLock::new(),
            eval_only: AtomicBool::new(false),
        }
    }

    /// Runs the script on `keys` with `args`. `Err` when Redis cannot say (down, breaker
    /// open, timed out) or the script failed.
    pub async fn run<T: redis::FromRedisValue + Send + 'static>(
        &self,
        cache: &AnswerCache,
        keys: &[&str],
        args: &[u64],
    ) -> Result<T, RedisFailure> {
        if self.sha.get().is_none() && !self.eval_only.load(Ordering::Relaxed) {
            let mut load = redis::cmd("SCRIPT");
            load.arg("LOAD").arg(self.code);
            match cache.command::<String>(load).await {
                Ok(sha) => {
                    let _ = self.sha.set(sha);
                }
                Err(RedisFailure::Reply(_)) => self.eval_only.store(true, Ordering::Relaxed),
                Err(e) => return Err(e),
            }
        }
        if let Some(sha) = self.sha.get() {
            match cache
                .command::<T>(self.cmd("EVALSHA", sha, keys, args))
                .await
            {
                Err(RedisFailure::Reply(m)) if m.contains("NOSCRIPT") => {}
                other => return other,
            }
        }
        cache
            .command::<T>(self.cmd("EVAL", self.code, keys, args))
            .await
    }

    fn cmd(&self, verb: &str, script: &str, keys: &[&str], args: &[u64]) -> redis::Cmd {
        let mut cmd = redis::cmd(verb);
        cmd.arg(script).arg(keys.len());
        for key in keys {
            cmd.arg(*key);
        }
        for arg in args {
            cmd.arg(*arg);
        }
        cmd
    }
}
