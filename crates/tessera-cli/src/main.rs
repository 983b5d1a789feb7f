#[allow(dead_code)]
mod manifest;

fn main() {}
