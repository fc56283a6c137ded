fn main() {
    eprintln!("step07-tokio: not built yet");
    std::process::exit(1);
}
