//! The fleet's PKI: CA and certificate issuance, identities, rustls configurations
