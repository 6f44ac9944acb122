"""The dashboard transport: AdminService over the Connect protocol, and the pages."""
