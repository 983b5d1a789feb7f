//! Compiles proto/*.proto into tonic clients with protox, a protobuf compiler written in Rust:
//! building Tessera needs no protoc and no system protobuf files.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["proto/etcd.proto", "proto/mvccpb.proto"];
    for file in files {
        println!("cargo:rerun-if-changed={file}");
    }
    let descriptors = protox::compile(files, ["proto"])?;
    tonic_prost_build::configure()
        .build_server(false)
        .build_transport(false)
        .compile_fds(descriptors)?;
    Ok(())
}
