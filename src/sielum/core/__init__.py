"""What every transport calls: the method table, the Authorizer, the runner, the observer."""
