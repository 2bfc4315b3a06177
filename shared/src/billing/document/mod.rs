//! An invoice as a document a customer receives: the amounts it states
//! (`amounts`: from micro-units to cents by EN 16931's arithmetic). The
//! UBL and PDF renderings that will read these amounts belong here too.

pub mod amounts;
