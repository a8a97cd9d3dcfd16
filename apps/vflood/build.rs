//! Link with the Torito linker script.
fn main() {
    torito_linker::link();
}
