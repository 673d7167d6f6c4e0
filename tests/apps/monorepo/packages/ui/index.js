// A workspace package, loaded by the server at runtime (serverExternalPackages):
// the standalone build reaches it through the link node_modules/@fixture/ui.
exports.badge = 'from the workspace package @fixture/ui';
