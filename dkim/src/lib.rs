//! DKIM keys and signing (see issue 5). Nothing here yet: the foundation sends unsigned.
