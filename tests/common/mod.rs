//! Shared test helpers: unique cache files in a private temp dir, removed on drop (also
//! when the test panics).
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A temp directory holding one test's cache file; removed on drop.
pub struct TempCache {
    pub dir: PathBuf,
    pub path: PathBuf,
}

impl TempCache {
    pub fn new(tag: &str) -> TempCache {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!(
            "larder-test-{tag}-{}-{n}-{:x}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("cache");
        TempCache { dir, path }
    }

    pub fn name(&self) -> &str {
        self.path.to_str().expect("utf-8 path")
    }

    pub fn options(&self) -> larder::Options {
        larder::Options::new()
            .capacity(4 << 20)
            .max_key_len(64)
            .max_value_len(1024)
    }

    pub fn open(&self) -> larder::Cache {
        self.options().open(self.name()).expect("open cache")
    }
}

impl Drop for TempCache {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
