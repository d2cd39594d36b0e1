//! Compiles `meshgate/v1/*.proto` and the Flight session messages with protox, a protobuf compiler written in Rust, so a fresh
//! machine needs no `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["meshgate/v1/ticket.proto", "arrow/flight/protocol/session.proto"];
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let descriptors = protox::compile(protos, ["."])?;
    prost_build::Config::new().compile_fds(descriptors)?;
    Ok(())
}
