// Rebuild when a migration is added: `sqlx::migrate!` embeds the folder.
// Also embeds the browser client: every file under `web/` becomes an
// `include_bytes!` entry of `$OUT_DIR/web_assets.rs` (served by
// `server::web`), in debug and release builds alike.
use std::path::{Path, PathBuf};

fn main() {
    println!("cargo:rerun-if-changed=migrations");
    println!("cargo:rerun-if-changed=web");
    // Read when the script runs, not when it was compiled (`env!`): a
    // target/ directory copied to another checkout must embed that
    // checkout's web/, not the one the script was first built in.
    let manifest = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let root = Path::new(&manifest).join("web");
    let mut files = Vec::new();
    collect(&root, &mut files);
    files.sort();
    let mut table = String::from("&[\n");
    for file in &files {
        let relative = file
            .strip_prefix(&root)
            .expect("walked below web/")
            .to_str()
            .expect("web/ file names are UTF-8")
            .replace('\\', "/");
        table.push_str(&format!(
            "    ({relative:?}, include_bytes!({:?}) as &[u8]),\n",
            file.display().to_string()
        ));
    }
    table.push(']');
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    std::fs::write(out.join("web_assets.rs"), table).expect("writing web_assets.rs");
}

fn collect(dir: &Path, files: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        println!("cargo:rerun-if-changed={}", path.display());
        if path.is_dir() {
            collect(&path, files);
        } else if !entry.file_name().to_string_lossy().starts_with('.') {
            files.push(path);
        }
    }
}
