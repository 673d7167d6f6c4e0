export const APP_NAME = 'dropship bench app';
export const APP_VERSION = process.env.APP_VERSION || '1.0.0';
