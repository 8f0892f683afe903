//! Compiles the wire protocol with prost. protoc comes from the
//! protoc-bin-vendored crate, so no system package is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    std::env::set_var("PROTOC", protoc);
    println!("cargo:rerun-if-changed=proto/rasputin.proto");
    prost_build::Config::new()
        .bytes(["."])
        // The status is shown as JSON by the status server and the CLI.
        .type_attribute("rasputin.wire.NodeStatus", "#[cfg_attr(feature = \"serde\", derive(serde::Serialize))]")
        // Its ranges hold raw keys; `rasputin ranges list` shows them its own way.
        .field_attribute("rasputin.wire.NodeStatus.ranges", "#[cfg_attr(feature = \"serde\", serde(skip))]")
        .field_attribute("rasputin.wire.NodeStatus.meta_range", "#[cfg_attr(feature = \"serde\", serde(skip))]")
        .compile_protos(&["proto/rasputin.proto"], &["proto/"])?;
    Ok(())
}
