fn main() {
    eprintln!("step06-ws-epoll: not built yet");
    std::process::exit(1);
}
