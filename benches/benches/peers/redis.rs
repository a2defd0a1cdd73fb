//! Redis over a unix socket, for the benches that compare with it: a private
//! redis-server and a connection that implements the workload's `Store`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use larder_bench::{self as workload, Store, StoreError, TempDir};

pub struct RedisStore {
    pub con: redis::Connection,
}

impl RedisStore {
    pub fn connect(socket: &Path) -> Result<RedisStore, StoreError> {
        let url = format!("unix://{}", socket.display());
        let con = redis::Client::open(url)?.get_connection()?;
        Ok(RedisStore { con })
    }

    pub fn prefill(
        &mut self,
        keys: u64,
        value_len: usize,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let mut v = vec![0u8; value_len];
        let mut i = 0;
        while i < keys {
            let mut pipe = redis::pipe();
            for j in i..(i + 1000).min(keys) {
                workload::write_value(j, 0, &mut v)?;
                pipe.cmd("SET")
                    .arg(&workload::key(j)[..])
                    .arg(&v[..])
                    .arg("EX")
                    .arg(ttl.as_secs().max(1))
                    .ignore();
            }
            pipe.query::<()>(&mut self.con)?;
            i += 1000;
        }
        Ok(())
    }
}

impl Store for RedisStore {
    fn get_into(&mut self, key: &[u8], buf: &mut Vec<u8>) -> Result<bool, StoreError> {
        let v: Option<Vec<u8>> = redis::cmd("GET").arg(key).query(&mut self.con)?;
        match v {
            Some(v) => {
                buf.clear();
                buf.extend_from_slice(&v);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    fn set(&mut self, key: &[u8], value: &[u8], ttl: Duration) -> Result<(), StoreError> {
        redis::cmd("SET")
            .arg(key)
            .arg(value)
            .arg("EX")
            .arg(ttl.as_secs().max(1))
            .query::<()>(&mut self.con)?;
        Ok(())
    }
}

/// A redis-server on a unix socket in a private directory; stopped and removed on drop.
pub struct RedisServer {
    child: Child,
    dir: TempDir,
}

impl RedisServer {
    /// How long the server gets to accept connections.
    const START_DEADLINE: Duration = Duration::from_secs(10);

    pub fn start() -> Result<RedisServer, StoreError> {
        let dir = TempDir::new("redis")?;
        let socket = dir.path().join("redis.sock");
        let child = Command::new("redis-server")
            .args(["--port", "0", "--unixsocket"])
            .arg(&socket)
            .args([
                "--unixsocketperm",
                "700",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .args(["--daemonize", "no", "--loglevel", "warning", "--dir"])
            .arg(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()?;
        let server = RedisServer { child, dir };
        let deadline = Instant::now() + Self::START_DEADLINE;
        loop {
            if let Ok(mut s) = RedisStore::connect(&server.socket()) {
                if redis::cmd("PING").query::<String>(&mut s.con).is_ok() {
                    return Ok(server);
                }
            }
            if Instant::now() >= deadline {
                return Err("redis-server did not accept connections within 10 s".into());
            }
            // Polling for a socket the server creates when it is up; bounded above.
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("redis.sock")
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
