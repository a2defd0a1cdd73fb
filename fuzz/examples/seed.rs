//! Writes seed corpora for the fuzz targets: `cargo run --example seed -- <corpus dir>`
//! (fuzz/seed.sh runs it). `header` gets the header pages of real cache files; the
//! structured targets get fixed pseudo-random bytes, which `Arbitrary` decodes into
//! operation sequences and word writes (their cache images are built in the target).

use std::path::Path;

use larder_fuzz::{hostile, image, table};

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    std::fs::create_dir_all(dir).expect("corpus dir");
    std::fs::write(dir.join(name), bytes).expect("seed file");
}

fn main() {
    let root = std::env::args().nth(1).unwrap_or_else(|| "corpus".into());
    let root = Path::new(&root);

    let header = root.join("header");
    let mut shapes: Vec<(u64, usize, usize)> = table::CONFIGS.to_vec();
    shapes.extend([
        (larder::DEFAULT_CAPACITY, 256, 64 << 10),
        (1 << 20, 4096, 1024),
        (8 << 20, 64, 100),
    ]);
    for (i, &(cap, k, v)) in shapes.iter().enumerate() {
        let opts = larder::Options::new()
            .capacity(cap)
            .max_key_len(k)
            .max_value_len(v);
        let bytes = image::create_image(&opts, |_| {});
        write(&header, &format!("real-{i}"), &bytes[..image::PAGE]);
        // The same header with one parameter changed (checksum left stale).
        let mut changed = bytes[..image::PAGE].to_vec();
        image::put(&mut changed, 3 * 8, cap * 2);
        write(&header, &format!("changed-{i}"), &changed);
    }
    for (i, img) in hostile::images().iter().enumerate() {
        write(&header, &format!("image-{i}"), &img.bytes[..image::PAGE]);
    }
    write(&header, "short", &[0u8; 100]);

    // xorshift: the same bytes on every run.
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    for target in ["ops", "scribble", "hostile_file", "hostile_header"] {
        let dir = root.join(target);
        write(&dir, "empty", &[]);
        for (i, len) in [16usize, 64, 256, 1024, 4096].into_iter().enumerate() {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            write(&dir, &format!("random-{i}"), &bytes);
        }
    }
}
