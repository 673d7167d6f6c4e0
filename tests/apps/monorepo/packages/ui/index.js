// A workspace package (node_modules/@fixture/ui links to it): the build
// bundles it into the server code, as it does every package that resolves
// outside node_modules.
exports.badge = 'from the workspace package @fixture/ui';
