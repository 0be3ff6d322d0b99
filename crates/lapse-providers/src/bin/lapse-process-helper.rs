//! The process provider's helper roles as a program of their own, for the provider's tests
//! (the `lapse` binary serves them itself: `lapse __lapse-process <role>`).

fn main() {
    lapse_providers::process::helper::run_if_helper();
    eprintln!("usage: lapse-process-helper __lapse-process <supervise|init|exec>");
    std::process::exit(2);
}
