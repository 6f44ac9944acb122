"""The web dashboard: sessions, the Connect transport for AdminService, and the pages."""
