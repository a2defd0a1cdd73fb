//! larder in one small program: create (or attach to) a cache, use every everyday
//! operation once, and remove the file at the end.
//!
//! ```text
//! cargo run --release --example basic
//! ```

use std::time::Duration;

use larder::{Cache, Error, Options};

fn main() -> Result<(), Error> {
    // A bare name lives in /dev/shm (as `<name>.larder4`); the pid makes it this run's.
    let name = format!("larder-basic-{}", std::process::id());
    // Every process runs the same open: the first creates the file, the others attach.
    // Sizes are fixed at creation: an open asking for others fails with Incompatible.
    let cache = Options::new()
        .capacity(8 << 20) // bytes of the file, reserved at creation
        .max_key_len(128)
        .max_value_len(4096)
        // A process stopped while holding a shard lock costs the others this long (then
        // Error::Timeout), never a hang.
        .lock_timeout(Duration::from_millis(200))
        .open(&name)?;
    println!("cache at {}", cache.path().display());
    let result = use_cache(&cache);
    // Close before removing: an attached handle would create the file again.
    drop(cache);
    Cache::unlink(&name)?;
    result
}

fn use_cache(cache: &Cache) -> Result<(), Error> {
    // A TTL bounds how long a value is served; `None` keeps it until evicted or removed.
    cache.set(b"session:42", b"user=alice", Some(Duration::from_secs(60)))?;
    assert_eq!(cache.get(b"session:42")?, Some(b"user=alice".to_vec()));

    // On a hot path, get_into copies into a buffer that is reused, not allocated anew.
    let mut buf = Vec::with_capacity(4096);
    if cache.get_into(b"session:42", &mut buf)? {
        println!("session:42 = {}", String::from_utf8_lossy(&buf));
    }

    // insert_if_absent never overwrites: the first writer wins, whichever process it is.
    assert!(cache.insert_if_absent(b"leader", b"worker-1", None)?);
    assert!(!cache.insert_if_absent(b"leader", b"worker-2", None)?);

    assert!(cache.remove(b"session:42")?);
    assert_eq!(cache.get(b"session:42")?, None);

    // A missing value is computed once: processes asking for the same key meanwhile wait
    // for it instead of computing it too. If the closure fails, nothing is cached.
    let ttl = Some(Duration::from_secs(300));
    let claims = cache.get_or_insert_with(b"token:abc", ttl, || {
        Ok::<_, Error>(b"sub=alice;scope=read".to_vec()) // validate the token here
    })?;
    println!("token:abc = {}", String::from_utf8_lossy(&claims));

    // The counters add up every process that uses the file.
    let s = cache.stats();
    println!(
        "{} entries, {} hits, {} misses, {} fills",
        s.entries, s.hits, s.misses, s.fills
    );

    // A crashed writer's shard is repaired by the next process on its own; a problem
    // verify reports is corruption: run `larder repair`, or remove the file.
    let report = cache.verify()?;
    println!("verify: {report}");
    assert!(report.is_clean());
    Ok(())
}
