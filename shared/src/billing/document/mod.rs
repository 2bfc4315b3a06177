//! An invoice as a document a customer receives: the amounts it states
//! (`amounts`: from micro-units to cents by EN 16931's arithmetic) and the
//! UBL e-invoice (`ubl`: Peppol BIS Billing 3.0 or NLCIUS) that states
//! them, and the PDF a person reads (`pdf`), both rendered from what
//! finalisation recorded (`issued`) and written to S3 by the RenderInvoice
//! step (`rendering`).

pub mod amounts;
pub mod issued;
pub mod pdf;
pub mod rendering;
pub mod ubl;
