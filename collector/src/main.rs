//! `egresswatch-collector`: the command line. STUB — being built in issue 3.

fn main() {}
