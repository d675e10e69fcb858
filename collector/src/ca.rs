//! Fleet certificate authority. STUB — being built in issue 3.
