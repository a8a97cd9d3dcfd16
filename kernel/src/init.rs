//! The one wiring function: bring the selected units up in a fixed order,
//! run the app, exit with its code. The only file (besides `lib.rs`) that
//! looks at unit features.

use torito_abi::boot_info::TraceId;

pub(crate) fn run() -> ! {
    crate::memory::init();
    // Further units (process, devices, fs, net) are initialised here, in
    // this order, once they have an implementation.
    crate::boot::mark(TraceId::AppMain);
    let code = crate::app::main();
    crate::exit::exit(code)
}
