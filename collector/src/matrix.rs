//! STUB — being built in issue 4.
