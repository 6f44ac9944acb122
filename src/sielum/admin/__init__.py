"""AdminService: enrollment tokens and devices, managed by admins over mTLS."""
