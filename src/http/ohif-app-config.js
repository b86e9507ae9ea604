// OHIF's app-config.js as pacsd serves it under /viewer (src/http/viewer.rs), and as the OHIF
// check and benchmark serve it (tests/js/ohif_check.mjs): __DICOMWEB_ROOT__ stands for the
// DICOMweb root URL.
window.config = {
  routerBasename: '/',
  extensions: [],
  modes: [],
  showStudyList: false,
  maxNumberOfWebWorkers: 2,
  showWarningMessageForCrossOrigin: false,
  showCPUFallbackMessage: false,
  showLoadingIndicator: true,
  strictZSpacingForVolumeViewport: false,
  investigationalUseDialog: { option: 'never' },
  defaultDataSourceName: 'pacsd',
  dataSources: [{
    namespace: '@ohif/extension-default.dataSourcesModule.dicomweb',
    sourceName: 'pacsd',
    configuration: {
      friendlyName: 'pacsd',
      name: 'pacsd',
      wadoUriRoot: '__DICOMWEB_ROOT__/wado',
      qidoRoot: '__DICOMWEB_ROOT__',
      wadoRoot: '__DICOMWEB_ROOT__',
      qidoSupportsIncludeField: true,
      imageRendering: 'wadors',
      thumbnailRendering: 'wadors',
      enableStudyLazyLoad: true,
      supportsFuzzyMatching: false,
      supportsWildcard: true,
      omitQuotationForMultipartRequest: true,
      bulkDataURI: { enabled: true },
    },
  }],
};
