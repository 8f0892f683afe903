//! Links librasputin.so with its soname; generates the C header with
//! cbindgen into OUT_DIR (ci/test.sh compares it with include/rasputin.h);
//! and writes rasputin.pc and the librasputin.so.0 link beside the library.

use std::path::Path;

fn main() {
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,librasputin.so.0");
    println!("cargo:rerun-if-changed=src/lib.rs");
    println!("cargo:rerun-if-changed=cbindgen.toml");
    let crate_dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let out_dir = std::env::var("OUT_DIR").expect("cargo sets OUT_DIR");
    let config = cbindgen::Config::from_file(format!("{crate_dir}/cbindgen.toml")).expect("cbindgen.toml is valid");
    cbindgen::generate_with_config(&crate_dir, config)
        .expect("the header generates")
        .write_to_file(format!("{out_dir}/rasputin.h"));
    // OUT_DIR is <target>/<profile>/build/<crate>-<hash>/out; the library lands in <target>/<profile>.
    let library_dir = Path::new(&out_dir).ancestors().nth(3).expect("OUT_DIR is inside the target directory");
    write_pkg_config(&crate_dir, library_dir);
    let link = library_dir.join("librasputin.so.0");
    if std::fs::symlink_metadata(&link).is_err() {
        std::os::unix::fs::symlink("librasputin.so", &link).expect("create the soname link");
    }
}

fn write_pkg_config(crate_dir: &str, library_dir: &Path) {
    let include_dir = Path::new(crate_dir).parent().expect("the crate sits in the workspace").join("include");
    let version = std::env::var("CARGO_PKG_VERSION").expect("cargo sets CARGO_PKG_VERSION");
    let text = format!(
        "libdir={}\nincludedir={}\n\nName: rasputin\nDescription: C client of Rasputin DB, a linearizable replicated key-value store\nVersion: {version}\nLibs: -L${{libdir}} -Wl,-rpath,${{libdir}} -lrasputin\nLibs.private: -lpthread -ldl -lm\nCflags: -I${{includedir}}\n",
        library_dir.display(),
        include_dir.display()
    );
    std::fs::write(library_dir.join("rasputin.pc"), text).expect("write rasputin.pc");
}
